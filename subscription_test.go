package channelsapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

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

func event(action string, id uint, name string) map[string]any {
	return map[string]any{"action": action, "pk": float64(id), "model": "tests.testmodel",
		"data": map[string]any{"id": float64(id), "name": name}}
}

func testModelServer(t *testing.T, opts ...channelsapi.Option) *testServer {
	t.Helper()
	return newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, opts...)
}

func TestSubscribeThenRESTCreate(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	ws.subscribe("create", nil)
	status, _ := srv.doREST(t, "POST", "/testmodel", `{"name":"over rest"}`)
	require.Equal(t, 201, status)
	assert.Equal(t, event("create", 1, "over rest"), ws.readPayload("testmodel"))
}

func TestSubscribeUpdateAndDelete(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "one", "two")
	ws := srv.dial(t, nil)
	ws.subscribe("update", 2)
	ws.subscribe("delete", nil)

	require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", "one!").Error) // not subscribed
	require.NoError(t, srv.DB.Model(&TestModel{ID: 2}).Update("name", "two!").Error)
	assert.Equal(t, event("update", 2, "two!"), ws.readPayload("testmodel"), "a pk-scoped subscription receives only its pk")

	require.NoError(t, srv.DB.Delete(&TestModel{}, 1).Error)
	assert.Equal(t, event("delete", 1, "one!"), ws.readPayload("testmodel"), "a delete event carries the object as it was")

	got := ws.request("testmodel", map[string]any{"action": "unsubscribe", "data": map[string]any{"action": "update"}, "pk": 2, "request_id": 3})
	assert.Equal(t, map[string]any{"action": "unsubscribe", "data": map[string]any{"action": "update"}, "errors": []any{},
		"response_status": 200.0, "request_id": 3.0}, got)
	require.NoError(t, srv.DB.Model(&TestModel{ID: 2}).Update("name", "unheard").Error)
	require.NoError(t, srv.DB.Delete(&TestModel{}, 2).Error)
	assert.Equal(t, event("delete", 2, "unheard"), ws.readPayload("testmodel"), "no update event after unsubscribe")
}

func TestSubscribeErrors(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	tests := []struct {
		name string
		give map[string]any
		want []any
		code float64
	}{
		{"no data", map[string]any{"action": "subscribe"}, []any{"action required"}, 400},
		{"empty data", map[string]any{"action": "subscribe", "data": map[string]any{}}, []any{"action required"}, 400},
		{"data not an object", map[string]any{"action": "subscribe", "data": "create"}, []any{"action required"}, 400},
		{"unknown event", map[string]any{"action": "subscribe", "data": map[string]any{"action": "retrieve"}}, []any{"Invalid subscription action"}, 400},
		{"keys are case-sensitive", map[string]any{"action": "subscribe", "data": map[string]any{"ACTION": "create"}}, []any{"action required"}, 400},
		{"event not a string", map[string]any{"action": "subscribe", "data": map[string]any{"action": 1}}, []any{"Invalid subscription action"}, 400},
		{"pk that cannot exist", map[string]any{"action": "subscribe", "data": map[string]any{"action": "update"}, "pk": "x"}, []any{"Not found."}, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ws.request("testmodel", tt.give)
			assert.Equal(t, tt.code, got["response_status"])
			assert.Equal(t, tt.want, got["errors"])
			assert.Nil(t, got["data"])
		})
	}
	assert.Zero(t, srv.API.Stats().Subscriptions, "failed subscribes leave nothing in the index")
}

func TestEachChangeOncePerConnection(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "a")
	ws := srv.dial(t, nil)
	ws.subscribe("update", nil)
	ws.subscribe("update", 1)
	ws.subscribe("update", "1") // the same subscription: "1" is the key 1
	for i := range 3 {
		name := fmt.Sprintf("v%d", i)
		require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", name).Error)
		assert.Equal(t, event("update", 1, name), ws.readPayload("testmodel"), "one event per change, never a duplicate")
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

func TestInstanceSubscription(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "thing")
	ws := srv.dial(t, nil)

	got := ws.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "r9"})
	assert.Equal(t, map[string]any{"action": "subscribe_instance", "data": nil, "errors": []any{}, "response_status": 201.0, "request_id": "r9"}, got)
	got = ws.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "r9"})
	assert.EqualValues(t, 201, got["response_status"], "subscribing again is harmless")
	got = ws.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": "1", "request_id": 7})
	assert.EqualValues(t, 201, got["response_status"])

	require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", "new").Error)
	updates := map[any]map[string]any{}
	for range 2 {
		p := ws.readPayload("testmodel")
		updates[p["request_id"]] = p
	}
	for _, rid := range []any{"r9", 7.0} {
		assert.Equal(t, map[string]any{"action": "update", "data": map[string]any{"id": 1.0, "name": "new"},
			"errors": []any{}, "response_status": 200.0, "request_id": rid}, updates[rid], "one event per request_id")
	}

	got = ws.request("testmodel", map[string]any{"action": "unsubscribe_instance", "pk": 1, "request_id": 7})
	assert.Equal(t, map[string]any{"action": "unsubscribe_instance", "data": nil, "errors": []any{}, "response_status": 204.0, "request_id": 7.0}, got)

	require.NoError(t, srv.DB.Delete(&TestModel{ID: 1}).Error)
	assert.Equal(t, map[string]any{"action": "delete", "data": map[string]any{"pk": 1.0},
		"errors": []any{}, "response_status": 204.0, "request_id": "r9"}, ws.readPayload("testmodel"))

	tests := []struct {
		name string
		give map[string]any
		code float64
		want []any
	}{
		{"no request_id", map[string]any{"action": "subscribe_instance", "pk": 1}, 400, []any{"request_id required"}},
		{"no such object", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": "x"}, 404, []any{"Not found."}},
		{"no pk", map[string]any{"action": "subscribe_instance", "request_id": "x"}, 404, []any{"Not found."}},
		{"unsubscribe without request_id", map[string]any{"action": "unsubscribe_instance", "pk": 1}, 400, []any{"request_id required"}},
		{"unsubscribe from a gone object", map[string]any{"action": "unsubscribe_instance", "pk": 1, "request_id": "r9"}, 204, []any{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ws.request("testmodel", tt.give)
			assert.Equal(t, tt.code, got["response_status"])
			assert.Equal(t, tt.want, got["errors"])
		})
	}
}

// SoftModel has a DeletedAt: deleting it is a soft delete.
type SoftModel struct {
	ID        uint           `json:"id"`
	Name      string         `json:"name"`
	DeletedAt gorm.DeletedAt `json:"-"`
}

func TestSoftDeleteIsDeleteEvent(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, db.AutoMigrate(&SoftModel{}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[SoftModel]{Stream: "soft", Label: "tests.soft"}))
	})
	require.NoError(t, srv.DB.Create(&SoftModel{Name: "gone soon"}).Error)
	ws := srv.dial(t, nil)
	got := ws.request("soft", map[string]any{"action": "subscribe", "data": map[string]any{"action": "delete"}})
	require.EqualValues(t, 200, got["response_status"])

	status, _ := srv.doREST(t, "DELETE", "/soft/1", "")
	require.Equal(t, 204, status)
	assert.Equal(t, map[string]any{"action": "delete", "pk": 1.0, "model": "tests.soft",
		"data": map[string]any{"id": 1.0, "name": "gone soon"}}, ws.readPayload("soft"))
	var n int64
	require.NoError(t, srv.DB.Unscoped().Model(&SoftModel{}).Count(&n).Error)
	assert.EqualValues(t, 1, n, "the row is kept, soft-deleted")
	status, _ = srv.doREST(t, "GET", "/soft/1", "")
	assert.Equal(t, 404, status)
}

var errRollback = errors.New("roll back")

// TestOnlyCommittedWorkIsPublished runs 400 operations that roll back and
// 400 that commit, over every way GORM has to run a transaction, and checks
// that exactly the 400 committed ones are published, in order.
func TestOnlyCommittedWorkIsPublished(t *testing.T) {
	srv := testModelServer(t)
	require.NoError(t, srv.DB.Exec("CREATE UNIQUE INDEX idx_name ON test_models(name)").Error)
	db := srv.DB
	ws := srv.dial(t, nil)
	for _, e := range []string{"create", "update", "delete"} {
		ws.subscribe(e, nil)
	}
	const rounds = 50
	scenarios := []struct {
		name string
		run  func(i int) // commits exactly one change named ok-..., rolls back one named bad-...
	}{
		{"failed statement in GORM's implicit transaction", func(i int) {
			require.NoError(t, db.Create(&TestModel{Name: fmt.Sprintf("ok-implicit-%d", i)}).Error)
			require.Error(t, db.Create(&TestModel{Name: fmt.Sprintf("ok-implicit-%d", i)}).Error, "duplicate name")
		}},
		{"db.Transaction returning an error", func(i int) {
			require.ErrorIs(t, db.Transaction(func(tx *gorm.DB) error {
				require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("bad-tx-%d", i)}).Error)
				return errRollback
			}), errRollback)
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
				return tx.Create(&TestModel{Name: fmt.Sprintf("ok-tx-%d", i)}).Error
			}))
		}},
		{"manual Begin and Rollback", func(i int) {
			tx := db.Begin()
			require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("bad-begin-%d", i)}).Error)
			require.NoError(t, tx.Rollback().Error)
			tx = db.Begin()
			require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("ok-begin-%d", i)}).Error)
			require.NoError(t, tx.Commit().Error)
		}},
		{"nested transaction rolled back to its savepoint", func(i int) {
			require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
				require.ErrorIs(t, tx.Transaction(func(inner *gorm.DB) error {
					require.NoError(t, inner.Create(&TestModel{Name: fmt.Sprintf("bad-nested-%d", i)}).Error)
					return errRollback
				}), errRollback)
				return tx.Create(&TestModel{Name: fmt.Sprintf("ok-nested-%d", i)}).Error
			}))
		}},
		{"manual savepoint", func(i int) {
			tx := db.Begin()
			require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("ok-sp-%d", i)}).Error)
			require.NoError(t, tx.SavePoint("sp").Error)
			require.NoError(t, tx.Create(&TestModel{Name: fmt.Sprintf("bad-sp-%d", i)}).Error)
			require.NoError(t, tx.RollbackTo("sp").Error)
			require.NoError(t, tx.Commit().Error)
		}},
		{"update and delete rolled back", func(i int) {
			m := TestModel{Name: fmt.Sprintf("ok-ud-%d", i)}
			require.NoError(t, db.Create(&m).Error)
			require.ErrorIs(t, db.Transaction(func(tx *gorm.DB) error {
				require.NoError(t, tx.Model(&m).Update("name", fmt.Sprintf("bad-ud-%d", i)).Error)
				require.NoError(t, tx.Delete(&m).Error)
				return errRollback
			}), errRollback)
		}},
		{"update of no row", func(i int) {
			res := db.Model(&TestModel{}).Where("name = ?", "bad-nothing").Update("name", fmt.Sprintf("bad-none-%d", i))
			require.NoError(t, res.Error)
			require.Zero(t, res.RowsAffected)
			require.NoError(t, db.Create(&TestModel{Name: fmt.Sprintf("ok-none-%d", i)}).Error)
		}},
		{"delete of no row", func(i int) {
			res := db.Delete(&TestModel{}, 1_000_000+i)
			require.NoError(t, res.Error)
			require.Zero(t, res.RowsAffected)
			require.NoError(t, db.Create(&TestModel{Name: fmt.Sprintf("ok-nodel-%d", i)}).Error)
		}},
	}
	var want []string
	for i := range rounds {
		for _, s := range scenarios {
			s.run(i)
		}
		for _, s := range []string{"implicit", "tx", "begin", "nested", "sp", "ud", "none", "nodel"} {
			want = append(want, fmt.Sprintf("ok-%s-%d", s, i))
		}
	}
	require.Len(t, want, 400)
	// The sentinel is the last change; everything published before it is
	// in the frames read up to it.
	require.NoError(t, db.Create(&TestModel{Name: "sentinel"}).Error)
	var got []string
	for {
		p := ws.readPayload("testmodel")
		name := p["data"].(map[string]any)["name"].(string)
		if name == "sentinel" {
			break
		}
		assert.Equal(t, "create", p["action"], "only creates committed: %v", p)
		got = append(got, name)
	}
	assert.Equal(t, want, got, "exactly the committed changes, in commit order")
	t.Logf("rolled back: %d operations, committed: %d, events received: %d", 400, len(want), len(got))
}

func TestTransactionEventsInStatementOrder(t *testing.T) {
	srv := testModelServer(t)
	ws := srv.dial(t, nil)
	for _, e := range []string{"create", "update", "delete"} {
		ws.subscribe(e, nil)
	}
	require.NoError(t, srv.DB.Transaction(func(tx *gorm.DB) error {
		m := TestModel{Name: "first"}
		require.NoError(t, tx.Create(&m).Error)
		require.NoError(t, tx.Model(&m).Update("name", "second").Error)
		require.NoError(t, tx.Create(&TestModel{Name: "other"}).Error)
		return tx.Delete(&m).Error
	}))
	assert.Equal(t, event("create", 1, "first"), ws.readPayload("testmodel"))
	assert.Equal(t, event("update", 1, "second"), ws.readPayload("testmodel"))
	assert.Equal(t, event("create", 2, "other"), ws.readPayload("testmodel"))
	assert.Equal(t, event("delete", 1, "second"), ws.readPayload("testmodel"))
}

// Counter counts votes; concurrent increments show the commit order.
type Counter struct {
	ID    uint `json:"id"`
	Votes int  `json:"votes"`
}

func TestPerObjectOrderUnderConcurrentWriters(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, db.AutoMigrate(&Counter{}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[Counter]{Stream: "counters"}))
	})
	require.NoError(t, srv.DB.Create(&Counter{}).Error)
	ws := srv.dial(t, nil)
	got := ws.request("counters", map[string]any{"action": "subscribe", "pk": 1, "data": map[string]any{"action": "update"}})
	require.EqualValues(t, 200, got["response_status"])

	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for range writers {
		wg.Go(func() {
			for range each {
				errs <- srv.DB.Model(&Counter{ID: 1}).Update("votes", gorm.Expr("votes + 1")).Error
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for want := 1; want <= writers*each; want++ {
		p := ws.readPayload("counters")
		require.EqualValues(t, want, p["data"].(map[string]any)["votes"], "events in commit order, never an older state after a newer one")
	}
}

func TestBulkStatements(t *testing.T) {
	t.Run("per-row events within the limit", func(t *testing.T) {
		srv := testModelServer(t)
		seed(t, srv.DB, "bulk-a", "keep", "bulk-b")
		ws := srv.dial(t, nil)
		ws.subscribe("update", nil)
		ws.subscribe("delete", nil)

		res := srv.DB.Model(&TestModel{}).Where("name LIKE ?", "bulk-%").Update("name", gorm.Expr("name || '!'"))
		require.NoError(t, res.Error)
		require.EqualValues(t, 2, res.RowsAffected)
		assert.Equal(t, event("update", 1, "bulk-a!"), ws.readPayload("testmodel"))
		assert.Equal(t, event("update", 3, "bulk-b!"), ws.readPayload("testmodel"))

		require.NoError(t, srv.DB.Where("name LIKE ?", "bulk-%").Delete(&TestModel{}).Error)
		assert.Equal(t, event("delete", 1, "bulk-a!"), ws.readPayload("testmodel"))
		assert.Equal(t, event("delete", 3, "bulk-b!"), ws.readPayload("testmodel"))

		require.NoError(t, srv.DB.Table("test_models").Where("name = ?", "keep").Update("name", "kept").Error)
		assert.Equal(t, event("update", 2, "kept"), ws.readPayload("testmodel"), "a write naming only the table is captured too")
	})
	t.Run("beyond the limit subscribers must resync", func(t *testing.T) {
		srv := testModelServer(t, channelsapi.WithBulkEventLimit(3))
		seed(t, srv.DB, "a", "b", "c", "d")
		ws := srv.dial(t, nil)
		ws.subscribe("update", nil)
		other := srv.dial(t, nil) // not subscribed: unaffected
		require.NoError(t, srv.DB.Model(&TestModel{}).Where("id > 0").Update("name", "x").Error)
		assert.Equal(t, 1013, ws.closeCode())
		got := other.request("testmodel", map[string]any{"action": "list"})
		assert.EqualValues(t, 200, got["response_status"])
	})
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

// TestConnectSubscribeDisconnectLeavesNothing runs 2,000 connection cycles
// and checks that no connection, subscription or goroutine remains.
func TestConnectSubscribeDisconnectLeavesNothing(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "a")
	for i := range 2000 {
		conn, resp, err := websocket.DefaultDialer.Dial(srv.WSURL, nil)
		require.NoError(t, err)
		_ = resp.Body.Close()
		c := &wsClient{tb: t, conn: conn}
		c.subscribe("update", nil)
		if i%2 == 0 {
			got := c.request("testmodel", map[string]any{"action": "subscribe_instance", "pk": 1, "request_id": i})
			require.EqualValues(t, 201, got["response_status"])
		}
		require.NoError(t, conn.Close())
	}
	require.Eventually(t, func() bool { return srv.API.Stats() == channelsapi.Stats{} }, 10*time.Second, 5*time.Millisecond,
		"stats after 2,000 cycles: %+v", srv.API.Stats())
}
