package channelsapi_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// This file tests authorize.go: who may see an event. A Scope is judged on
// the row values the event carries, never on the row as it is when the
// event is delivered; it sees each connection's own Request (user and
// headers); and its cost does not grow with the number of connections.

// scopedNote is a note its owner alone sees, by a Scope on its owner column.
type scopedNote struct {
	ID    uint   `json:"id" gorm:"primaryKey"`
	Owner string `json:"owner"`
	Text  string `json:"text"`
}

// scopeUser is the user of the tests of this file. freshUser makes a new one
// for every request, as an application that loads its user per request
// does: two connections of one account never share a user value.
type scopeUser struct{ Name string }

// freshUser is the authentication middleware of this file: the header
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
		Scope: func(r *channelsapi.Request, db *gorm.DB) *gorm.DB {
			return db.Where("owner = ?", scopeUserName(r))
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

// subscribeTo subscribes c to events of every object of stream.
func (c *wsClient) subscribeTo(stream string, events ...string) {
	c.tb.Helper()
	for _, e := range events {
		got := c.request(stream, map[string]any{"action": "subscribe", "data": map[string]any{"action": e}, "request_id": "sub-" + e})
		require.EqualValues(c.tb, 200, got["response_status"], "%v", got)
	}
}

// noteEvent is the event of action on n, as a parsed payload.
func noteEvent(action string, n scopedNote) map[string]any {
	return map[string]any{"action": action, "pk": float64(n.ID), "model": "tests.scopednote",
		"data": map[string]any{"id": float64(n.ID), "owner": n.Owner, "text": n.Text}}
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

// TestScopedStreamDeliversEveryEvent has writers create, update and delete
// notes of one user as fast as they can, through GORM, while the user's
// connection reads: every change reaches it, each row's in order, carrying
// the data written, whether its event is delivered before or after the next
// change of the row.
func TestScopedStreamDeliversEveryEvent(t *testing.T) {
	const n = 1000 // objects per writer
	tests := []struct {
		name       string
		ownerCheck bool
		writers    int
	}{
		{"scope, one writer", false, 1},
		{"scope, four writers", false, 4},
		{"scope and object permission, one writer", true, 1},
		{"scope and object permission, four writers", true, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			// The connection's queue holds every event: however fast the
			// client reads, on two cores the server's write goroutine can wait
			// for a CPU long enough for 256 frames to queue up (it is runnable
			// when the queue overflows), and this test is not about slow
			// clients (TestSlowClientClosedWith1013 is).
			srv := newScopedServer(t, openDB(t, &scopedNote{}), func(api *channelsapi.API) {
				require.NoError(t, channelsapi.Add(api, scopedNotes(tt.ownerCheck, nil)))
			}, channelsapi.WithQueueSize(3*n*tt.writers+1))
			ws := srv.dialUser(t, "alice")
			ws.subscribeTo("notes", "create", "update", "delete")

			// The reader drains the socket while the writers write, up to
			// the sentinel.
			var got []map[string]any
			var readErr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					if readErr = ws.conn.SetReadDeadline(time.Now().Add(readTimeout)); readErr != nil {
						return
					}
					var f struct{ Payload map[string]any }
					if readErr = ws.conn.ReadJSON(&f); readErr != nil {
						return
					}
					if data, _ := f.Payload["data"].(map[string]any); data["text"] == "sentinel" {
						return
					}
					got = append(got, f.Payload)
				}
			}()

			written := make([][]scopedNote, tt.writers) // per writer, its notes as last written
			var wg sync.WaitGroup
			for w := range tt.writers {
				wg.Go(func() {
					for i := range n {
						note := scopedNote{Owner: "alice", Text: fmt.Sprintf("w%d-%d-created", w, i)}
						if !assert.NoError(t, srv.DB.Create(&note).Error) {
							return
						}
						note.Text = fmt.Sprintf("w%d-%d-updated", w, i)
						if !assert.NoError(t, srv.DB.Model(&note).Update("text", note.Text).Error) ||
							!assert.NoError(t, srv.DB.Delete(&note).Error) {
							return
						}
						written[w] = append(written[w], note)
					}
				})
			}
			wg.Wait()
			require.NoError(t, srv.DB.Create(&scopedNote{Owner: "alice", Text: "sentinel"}).Error)
			<-done
			require.NoError(t, readErr, "after %d events", len(got))

			byPK := map[float64][]map[string]any{}
			for _, p := range got {
				pk, _ := p["pk"].(float64)
				byPK[pk] = append(byPK[pk], p)
			}
			for w, notes := range written {
				require.Len(t, notes, n, "writer %d", w)
				counts := map[any]int{}
				wrong, example := 0, ""
				for _, note := range notes {
					events := byPK[float64(note.ID)]
					for _, e := range events {
						counts[e["action"]]++
					}
					created := note
					created.Text = strings.Replace(note.Text, "-updated", "-created", 1)
					want := []map[string]any{noteEvent("create", created), noteEvent("update", note), noteEvent("delete", note)}
					if !assert.ObjectsAreEqual(want, events) {
						if wrong++; wrong == 1 {
							example = fmt.Sprintf("note %d: got %v", note.ID, events)
						}
					}
				}
				assert.Equal(t, map[any]int{"create": n, "update": n, "delete": n}, counts, "writer %d: one event per change", w)
				assert.Zero(t, wrong, "writer %d: notes whose events are not create, update, delete with the data written; first: %s", w, example)
			}
			t.Logf("%d writers x %d notes: %d events in %v", tt.writers, n, len(got), time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestScopeJudgesTheVersionAnEventCarries holds up delivery while a note is
// first written with a secret by its owner and then given to bob with the
// secret cleared: bob, subscribed to updates, receives the version given to
// him only, never the secret one, although by the time the secret version
// is delivered the row is his.
func TestScopeJudgesTheVersionAnEventCarries(t *testing.T) {
	gate := newDeliveryGate()
	srv := newScopedServer(t, openDB(t, &scopedNote{}), func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, scopedNotes(false, gate)))
	})
	note := scopedNote{Owner: "alice", Text: "draft"}
	require.NoError(t, srv.DB.Create(&note).Error)
	bob := srv.dialUser(t, "bob")
	bob.subscribeTo("notes", "update")

	release := stallDelivery(t, srv, gate)
	require.NoError(t, srv.DB.Model(&note).Update("text", "the secret").Error) // alice's
	require.NoError(t, srv.DB.Model(&note).Updates(map[string]any{"owner": "bob", "text": ""}).Error)
	release()
	assert.Equal(t, noteEvent("update", scopedNote{ID: note.ID, Owner: "bob", Text: ""}), bob.readPayload("notes"),
		"the version bob may see; the secret one was alice's")

	require.NoError(t, srv.DB.Model(&note).Update("text", "sentinel").Error)
	assert.Equal(t, noteEvent("update", scopedNote{ID: note.ID, Owner: "bob", Text: "sentinel"}), bob.readPayload("notes"),
		"nothing else was pending")
}

// tenantNote belongs to a tenant, which a request names in a header.
type tenantNote struct {
	ID     uint   `json:"id" gorm:"primaryKey"`
	Tenant string `json:"tenant"`
	Text   string `json:"text"`
}

// TestScopeSeesEachConnectionsHeaders opens two connections of one user,
// each for another tenant (a header the Scope reads): each receives the
// creates of its tenant only, all of them, in order.
func TestScopeSeesEachConnectionsHeaders(t *testing.T) {
	db := openDB(t, &tenantNote{})
	srv := newAuthServer(t, db, func(api *channelsapi.API) { // one *authUser for alice's every request
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[tenantNote]{
			Stream: "tenantnotes",
			Scope: func(r *channelsapi.Request, db *gorm.DB) *gorm.DB {
				return db.Where("tenant = ?", r.Header.Get("X-Tenant"))
			},
		}))
	})
	conns := map[string]*wsClient{}
	for _, tenant := range []string{"A", "B"} {
		conns[tenant] = srv.dial(t, http.Header{"X-User": {userA.Name}, "X-Tenant": {tenant}})
		got := conns[tenant].request("tenantnotes", map[string]any{"action": "subscribe", "data": map[string]any{"action": "create"}})
		require.EqualValues(t, 200, got["response_status"], "%v", got)
	}
	want := map[string][]any{}
	for i := range 10 {
		for _, tenant := range []string{"A", "B"} {
			text := fmt.Sprintf("%s-%d", tenant, i)
			require.NoError(t, db.Create(&tenantNote{Tenant: tenant, Text: text}).Error)
			want[tenant] = append(want[tenant], text)
		}
	}
	for _, tenant := range []string{"A", "B"} {
		require.NoError(t, db.Create(&tenantNote{Tenant: tenant, Text: tenant + "-end"}).Error)
	}
	for _, tenant := range []string{"A", "B"} {
		var got []any
		for {
			p := conns[tenant].readPayload("tenantnotes")
			text := p["data"].(map[string]any)["text"]
			if text == tenant+"-end" {
				break
			}
			got = append(got, text)
		}
		assert.Equal(t, want[tenant], got, "tenant %s's connection", tenant)
	}
}

// queryCounter counts the SQL statements run on a *gorm.DB (dry runs, which
// only render SQL, excepted), inside a transaction and outside.
type queryCounter struct{ inTx, outside atomic.Int64 }

// countQueries counts the queries of db, registering callbacks on its Query,
// Row and Raw processors.
func countQueries(tb testing.TB, db *gorm.DB) *queryCounter {
	tb.Helper()
	qc := &queryCounter{}
	count := func(tx *gorm.DB) {
		if tx.DryRun {
			return
		}
		if _, ok := tx.Statement.ConnPool.(gorm.TxCommitter); ok {
			qc.inTx.Add(1)
		} else {
			qc.outside.Add(1)
		}
	}
	cb := db.Callback()
	require.NoError(tb, cb.Query().After("gorm:query").Register("test:count_query", count))
	require.NoError(tb, cb.Row().After("gorm:row").Register("test:count_row", count))
	require.NoError(tb, cb.Raw().After("gorm:raw").Register("test:count_raw", count))
	return qc
}

// TestScopeQueriesDoNotGrowWithConnections counts the queries that K
// updates of bob's note cost while 1 and then 200 connections of alice
// subscribe to the stream: connections whose Scope is the same query are
// served by one evaluation, so the figures hardly differ.
func TestScopeQueriesDoNotGrowWithConnections(t *testing.T) {
	const k = 20
	measure := func(t *testing.T, conns int) (inTx, total int64) {
		srv := newScopedServer(t, openDB(t, &scopedNote{}), func(api *channelsapi.API) {
			require.NoError(t, channelsapi.Add(api, scopedNotes(false, nil)))
		})
		bobs := scopedNote{Owner: "bob", Text: "v0"}
		require.NoError(t, srv.DB.Create(&bobs).Error)
		clients := make([]*wsClient, conns)
		for i := range clients {
			clients[i] = srv.dialUser(t, "alice")
			clients[i].subscribeTo("notes", "create", "update", "delete")
		}
		qc := countQueries(t, srv.DB)
		for i := range k {
			require.NoError(t, srv.DB.Model(&bobs).Update("text", fmt.Sprintf("v%d", i+1)).Error)
		}
		// The sentinel comes after the updates' events: once every
		// connection has it, their authorization is over.
		sentinel := scopedNote{Owner: "alice", Text: "sentinel"}
		require.NoError(t, srv.DB.Create(&sentinel).Error)
		for i, c := range clients {
			require.Equal(t, noteEvent("create", sentinel), c.readPayload("notes"), "connection %d: bob's updates are not alice's", i)
		}
		inTx, outside := qc.inTx.Load(), qc.outside.Load()
		t.Logf("%d connections, %d updates and a sentinel: %d queries in the writing transactions, %d outside", conns, k, inTx, outside)
		return inTx, inTx + outside
	}
	var oneTx, oneTotal, manyTx, manyTotal int64
	t.Run("1 connection", func(t *testing.T) { oneTx, oneTotal = measure(t, 1) })
	t.Run("200 connections", func(t *testing.T) { manyTx, manyTotal = measure(t, 200) })
	within := func(a, b int64) bool { return float64(max(a, b)) <= 1.2*float64(min(a, b)) }
	assert.True(t, within(oneTx, manyTx), "queries in transactions: %d with 1 connection, %d with 200", oneTx, manyTx)
	assert.True(t, within(oneTotal, manyTotal), "queries in all: %d with 1 connection, %d with 200", oneTotal, manyTotal)
}

// TestScopeOnlyStreamAcrossInstances updates and deletes alice's note on one
// instance while bob, on the other, subscribes to updates and deletes: he
// could see the note neither before nor after, which the events' rows tell,
// so he receives nothing and is not made to resync; his own note's event is
// his next frame.
func TestScopeOnlyStreamAcrossInstances(t *testing.T) {
	url := redisURL(t)
	dbs := openShared(t, 2, &scopedNote{})
	prefix := testPrefix()
	setup := func(api *channelsapi.API) { require.NoError(t, channelsapi.Add(api, scopedNotes(false, nil))) }
	a, b := newScopedServer(t, dbs[0], setup, withRedis(t, url, prefix)), newScopedServer(t, dbs[1], setup, withRedis(t, url, prefix))
	alices, bobs := scopedNote{Owner: "alice", Text: "a0"}, scopedNote{Owner: "bob", Text: "b0"}
	require.NoError(t, a.DB.Create(&alices).Error)
	require.NoError(t, a.DB.Create(&bobs).Error)
	bob := b.dialUser(t, "bob")
	bob.subscribeTo("notes", "update", "delete")

	require.NoError(t, a.DB.Model(&alices).Update("text", "a1").Error)
	require.NoError(t, a.DB.Delete(&alices).Error)
	bobs.Text = "b1"
	require.NoError(t, a.DB.Model(&bobs).Update("text", bobs.Text).Error)
	assert.Equal(t, noteEvent("update", bobs), bob.readPayload("notes"), "bob is not closed, and alice's note sends him nothing")
}

// TestRequestIDSizeBound checks the bound on a request_id, which an instance
// subscription keeps for as long as it lasts: 256 bytes of compact JSON.
func TestRequestIDSizeBound(t *testing.T) {
	srv := testModelServer(t)
	seed(t, srv.DB, "x")
	ws := srv.dial(t, nil)
	tests := []struct {
		name   string
		length int // of the request_id, a JSON string, quotes included
		status float64
		errors []any
		subs   int // subscriptions held afterwards
	}{
		{"60 KiB", 60 << 10, 400, []any{"request_id too long"}, 0},
		{"257 bytes", 257, 400, []any{"request_id too long"}, 0},
		{"256 bytes", 256, 201, []any{}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rid := `"` + strings.Repeat("r", tt.length-2) + `"`
			ws.in(t).sendRaw([]byte(`{"stream":"testmodel","payload":{"action":"subscribe_instance","pk":1,"request_id":` + rid + `}}`))
			got := ws.in(t).readPayload("testmodel")
			assert.Equal(t, tt.status, got["response_status"])
			assert.Equal(t, tt.errors, got["errors"])
			assert.Equal(t, tt.subs, srv.API.Stats().Subscriptions)
		})
	}
	require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", "y").Error)
	rid, _ := ws.readPayload("testmodel")["request_id"].(string)
	assert.True(t, rid == strings.Repeat("r", 254), "the event of the one subscription, with its request_id whole: got %d bytes", len(rid))
}
