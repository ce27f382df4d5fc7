package channelsapi_test

// This file tests authorize.go: who receives an event. Every event is
// authorized for every recipient (Permission, ObjectPermission and Scope); a
// Scope is judged on the row values the event carries, never on the row as
// it is when the event is delivered; it sees each connection's own Request
// (user and headers); and its cost does not grow with the number of
// connections.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

func instanceNoteEvent(rid, action string, data any, status int) string {
	return describeNoteEvent(map[string]any{"action": action, "request_id": rid, "data": plainJSON(data),
		"response_status": float64(status), "errors": []any{}})
}

// TestEventsPerRecipient checks that every event is authorized for every
// recipient: writes reach their author and the admin only, and a note that
// changes owner leaves the view of the old owner (a delete) and enters the
// new owner's.
func TestEventsPerRecipient(t *testing.T) {
	srv := newNotesServer(t)
	db := srv.DB
	// The event of a change committed before a subscription may still reach
	// it: the watcher waits for noteA's, so that the clients below start
	// from a clean slate.
	watcher := srv.dialAs(t, userAdmin)
	got := watcher.request("notes", map[string]any{"action": "subscribe", "data": map[string]any{"action": "create"}, "request_id": "w"})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	noteA := authNote{OwnerID: userA.ID, Text: "watched by alice"}
	require.NoError(t, db.Create(&noteA).Error)
	require.Equal(t, "create", watcher.readPayload("notes")["action"])
	clients := map[*authUser]*wsClient{}
	for _, u := range []*authUser{userA, userB, userAdmin} {
		c := srv.dialAs(t, u)
		for _, e := range []string{"create", "update", "delete"} {
			got := c.request("notes", map[string]any{"action": "subscribe", "data": map[string]any{"action": e}, "request_id": e})
			require.EqualValues(t, 200, got["response_status"], "%v", got)
		}
		clients[u] = c
	}
	got = clients[userA].request("notes", map[string]any{"action": "subscribe_instance", "pk": noteA.ID, "request_id": "inst"})
	require.EqualValues(t, 201, got["response_status"], "%v", got)
	got = clients[userB].request("notes", map[string]any{"action": "subscribe_instance", "pk": noteA.ID, "request_id": "inst"})
	require.EqualValues(t, 404, got["response_status"], "bob may not subscribe to alice's note: %v", got)

	want := map[*authUser][]string{}
	to := func(ev string, us ...*authUser) {
		for _, u := range us {
			want[u] = append(want[u], ev)
		}
	}
	createAs := func(u *authUser, text string) authNote {
		status, body := srv.restAs(t, u, http.MethodPost, "/notes", string(jsonBytes(t, map[string]any{"text": text})))
		require.Equal(t, http.StatusCreated, status, "%s", body)
		var n authNote
		require.NoError(t, json.Unmarshal(body, &n))
		require.Equal(t, u.ID, n.OwnerID)
		return n
	}
	var mismatches, expected, received int
	check := func(phase string) {
		sentinelA := authNote{OwnerID: userA.ID, Text: "sentinel of alice " + phase}
		sentinelB := authNote{OwnerID: userB.ID, Text: "sentinel of bob " + phase}
		require.NoError(t, db.Create(&sentinelA).Error)
		require.NoError(t, db.Create(&sentinelB).Error)
		to(groupNoteEvent("create", sentinelA), userAdmin)
		for _, u := range []*authUser{userA, userB, userAdmin} {
			sentinel := sentinelB.Text
			if u == userA {
				sentinel = sentinelA.Text
			}
			gotEvents := noteEvents(clients[u], sentinel)
			expected += len(want[u])
			received += len(gotEvents)
			if n := multisetDiff(want[u], gotEvents); n > 0 {
				mismatches += n
				t.Errorf("%s: events of %s:\n got %q\nwant %q", phase, u.Name, gotEvents, want[u])
			} else {
				assert.Equal(t, want[u], gotEvents, "%s: order of the events of %s", phase, u.Name)
			}
			want[u] = nil
		}
	}

	// Each user's writes reach that user and the admin, never the other.
	a1 := createAs(userA, "alice's first")
	to(groupNoteEvent("create", a1), userA, userAdmin)
	b1 := createAs(userB, "bob's first")
	to(groupNoteEvent("create", b1), userB, userAdmin)
	status, body := srv.restAs(t, userA, http.MethodPatch, fmt.Sprintf("/notes/%d", noteA.ID), `{"text":"alice edits"}`)
	require.Equal(t, http.StatusOK, status, "%s", body)
	noteA.Text = "alice edits"
	to(groupNoteEvent("update", noteA), userA, userAdmin)
	to(instanceNoteEvent("inst", "update", noteA, 200), userA)
	require.NoError(t, db.Model(&b1).Update("text", "bob edits").Error)
	to(groupNoteEvent("update", b1), userB, userAdmin)
	for _, method := range []string{http.MethodPatch, http.MethodDelete} {
		status, body = srv.restAs(t, userB, method, fmt.Sprintf("/notes/%d", a1.ID), `{"text":"bob was here"}`)
		require.Equal(t, http.StatusNotFound, status, "bob may not write alice's note: %s", body)
	}
	status, body = srv.restAs(t, userA, http.MethodDelete, fmt.Sprintf("/notes/%d", a1.ID), "")
	require.Equal(t, http.StatusNoContent, status, "%s", body)
	to(groupNoteEvent("delete", a1), userA, userAdmin)
	check("own writes")

	// The note alice watches becomes bob's: alice is told it is gone, on
	// both kinds of subscription, bob and the admin see the update.
	before := noteA
	require.NoError(t, db.Model(&noteA).Update("owner_id", userB.ID).Error)
	to(groupNoteEvent("delete", before), userA)
	to(instanceNoteEvent("inst", "delete", map[string]any{"pk": noteA.ID}, 204), userA)
	to(groupNoteEvent("update", noteA), userB, userAdmin)
	check("change of owner")

	// From now on only bob and the admin hear of it.
	require.NoError(t, db.Model(&noteA).Update("text", "bob's now").Error)
	to(groupNoteEvent("update", noteA), userB, userAdmin)
	status, body = srv.restAs(t, userB, http.MethodPatch, fmt.Sprintf("/notes/%d", noteA.ID), `{"text":"bob edits it"}`)
	require.Equal(t, http.StatusOK, status, "%s", body)
	noteA.Text = "bob edits it"
	to(groupNoteEvent("update", noteA), userB, userAdmin)
	status, _ = srv.restAs(t, userA, http.MethodGet, fmt.Sprintf("/notes/%d", noteA.ID), "")
	assert.Equal(t, http.StatusNotFound, status, "alice no longer sees it")
	require.NoError(t, db.Delete(&noteA).Error)
	to(groupNoteEvent("delete", noteA), userB, userAdmin)
	check("after the change")

	t.Logf("events per recipient: %d expected, %d received, %d mismatches", expected, received, mismatches)
	assert.Zero(t, mismatches)
}

// multisetDiff counts the lines missing from got and the extra ones.
func multisetDiff(want, got []string) int {
	n := map[string]int{}
	for _, w := range want {
		n[w]++
	}
	for _, g := range got {
		n[g]--
	}
	diff := 0
	for _, v := range n {
		diff += max(v, -v)
	}
	return diff
}

// noteEvent is the event of action on n, as a parsed payload.
func noteEvent(action string, n scopedNote) map[string]any {
	return map[string]any{"action": action, "pk": float64(n.ID), "model": "tests.scopednote",
		"data": map[string]any{"id": float64(n.ID), "owner": n.Owner, "text": n.Text}}
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
			var lastOffset float64
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
					// Offsets grow in the order events are sent.
					if offset, _ := f.Payload["offset"].(float64); offset <= lastOffset {
						readErr = fmt.Errorf("offset %v after %v", f.Payload["offset"], lastOffset)
						return
					} else {
						lastOffset = offset
					}
					delete(f.Payload, "offset")
					delete(f.Payload, "etag") // etag_test.go checks it
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
			Scope: func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
				return db.Where("tenant = ?", r.Header.Get("X-Tenant")), nil
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
// only render SQL, and the outbox's, excepted), inside a transaction and
// outside, once on.
type queryCounter struct {
	on            atomic.Bool
	inTx, outside atomic.Int64
}

// outboxTable matches SQL that names a table of the outbox (outbox.go).
var outboxTable = regexp.MustCompile(`channelsapi_(outbox|pending|streams)\b`)

// countQueries counts the queries of db, registering callbacks on its
// Query, Row and Raw processors. It must be called before db is served:
// GORM's callbacks may not be registered while statements run. The
// outbox's statements on its own tables (its poll, which runs on a clock)
// are not counted.
func countQueries(tb testing.TB, db *gorm.DB) *queryCounter {
	tb.Helper()
	qc := &queryCounter{}
	count := func(tx *gorm.DB) {
		if tx.DryRun || !qc.on.Load() || outboxTable.MatchString(tx.Statement.SQL.String()) {
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
		db := openDB(t, &scopedNote{})
		qc := countQueries(t, db)
		srv := newScopedServer(t, db, func(api *channelsapi.API) {
			require.NoError(t, channelsapi.Add(api, scopedNotes(false, nil)))
		})
		bobs := scopedNote{Owner: "bob", Text: "v0"}
		require.NoError(t, srv.DB.Create(&bobs).Error)
		clients := make([]*wsClient, conns)
		for i := range clients {
			clients[i] = srv.dialUser(t, "alice")
			clients[i].subscribeTo("notes", "create", "update", "delete")
		}
		qc.on.Store(true)
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

func TestLateSubscriberToAScopedDeleteGetsTheEvent(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.Scope = func(_ context.Context, _ *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
				return db.Where("name <> ?", "hidden"), nil
			}
		})
	})
	seed(t, srv.DB, "x", "hidden")
	ws := srv.dial(t, nil)
	tx := srv.DB.Begin()
	require.NoError(t, tx.Delete(&TestModel{ID: 2}).Error)
	require.NoError(t, tx.Delete(&TestModel{ID: 1}).Error)
	ws.subscribe("delete", nil) // after the statements, before the commit
	require.NoError(t, tx.Commit().Error)
	assert.Equal(t, event("delete", 1, "x"), ws.readPayload("testmodel"),
		"its Scope is judged on the deleted row the event carries: the row it could see arrives, the hidden one does not")
}

// softNote is a soft-deleted note of its owner.
type softNote struct {
	ID        uint           `json:"id" gorm:"primaryKey"`
	Owner     string         `json:"owner"`
	DeletedAt gorm.DeletedAt `json:"-"`
}

// TestScopeOfASoftDelete: the row a soft delete wrote has its deleted_at
// set; the Scope judges it as the row it was, so its owner hears of it.
func TestScopeOfASoftDelete(t *testing.T) {
	db := openDB(t, &softNote{})
	srv := newScopedServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[softNote]{
			Stream: "softnotes",
			Scope: func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
				return db.Where("owner = ?", scopeUserName(r)), nil
			},
		}))
	})
	alice := srv.dialUser(t, "alice")
	alice.subscribeTo("softnotes", "create", "delete")
	note := softNote{Owner: "alice"}
	require.NoError(t, db.Create(&note).Error)
	assert.Equal(t, "create", alice.readPayload("softnotes")["action"])
	require.NoError(t, db.Delete(&note).Error)
	got := alice.readPayload("softnotes")
	assert.Equal(t, "delete", got["action"], "%v", got)
	assert.EqualValues(t, note.ID, got["pk"])
}
