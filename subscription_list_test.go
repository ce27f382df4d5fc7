package channelsapi_test

// This file tests the live queries of subscription.go (PROTOCOL.md section
// 9): subscribe_list and unsubscribe_list, enter, change and leave per
// recipient, the snapshot, and a model test in which concurrent writers
// move rows in and out of many live queries.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
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

// ownQuestions scopes questions to the X-User header's owner; "root"
// sees every row.
func ownQuestions(vs *channelsapi.ViewSet[pollQuestion]) {
	vs.MaxPageSize = 1000
	vs.ScopeFilter = func(_ context.Context, r *channelsapi.Request) (channelsapi.Filter, error) {
		switch u := r.Header.Get("X-User"); u {
		case "":
			return nil, channelsapi.ErrNotAuthenticated
		case "root":
			return nil, nil
		default:
			return channelsapi.Filter{"owner": u}, nil
		}
	}
}

func asUser(name string) http.Header { return http.Header{"X-User": {name}} }

// queryEvent is the payload of a live-query event, as PROTOCOL.md 9 writes it.
func queryEvent(tb testing.TB, action string, q pollQuestion, rid any) map[string]any {
	return map[string]any{"action": action, "pk": float64(q.ID), "data": jsonOf(tb, q), "model": "polls.question", "request_id": rid}
}

func TestSubscribeListExampleOfTheProtocol(t *testing.T) {
	srv := newServerOn(t, openDB(t, &pollQuestion{}), func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, pollQuestions()))
	})
	ws := srv.dial(t, nil)
	got := ws.request("questions", map[string]any{"action": "subscribe_list", "data": map[string]any{"question_text__icontains": "why"}, "request_id": "q1"})
	assert.Equal(t, map[string]any{"action": "subscribe_list", "data": map[string]any{"subscription": "q1"}, "errors": []any{}, "response_status": 200.0, "request_id": "q1"}, got)

	db := srv.DB
	other := pollQuestion{QuestionText: "What?", PubDate: pollBase}
	require.NoError(t, db.Create(&other).Error) // outside the filter: nothing
	q := pollQuestion{QuestionText: "Why?", PubDate: pollBase}
	require.NoError(t, db.Create(&q).Error)
	assert.Equal(t, queryEvent(t, "create", q, "q1"), ws.readPayload("questions"), "created inside: create")

	require.NoError(t, db.Model(&q).Update("votes", 3).Error)
	q.Votes = 3
	assert.Equal(t, queryEvent(t, "update", q, "q1"), ws.readPayload("questions"), "changed and still inside: update")

	// A column no filter reads: the rows are not read before the update,
	// and stay where they were.
	require.NoError(t, db.Model(&other).Update("secret", "x").Error) // outside: nothing
	require.NoError(t, db.Model(&q).Update("secret", "y").Error)
	assert.Equal(t, queryEvent(t, "update", q, "q1"), ws.readPayload("questions"), "an unfiltered column changed inside: update")

	left := q
	require.NoError(t, db.Model(&q).Update("question_text", "How?").Error)
	assert.Equal(t, queryEvent(t, "delete", left, "q1"), ws.readPayload("questions"), "updated out: delete with the last state inside")

	require.NoError(t, db.Model(&other).Update("votes", 1).Error) // still outside: nothing
	require.NoError(t, db.Model(&other).Update("question_text", "why so?").Error)
	other.Votes, other.QuestionText = 1, "why so?"
	assert.Equal(t, queryEvent(t, "create", other, "q1"), ws.readPayload("questions"), "updated in: create")

	require.NoError(t, db.Delete(&q).Error) // outside: nothing
	require.NoError(t, db.Delete(&other).Error)
	assert.Equal(t, queryEvent(t, "delete", other, "q1"), ws.readPayload("questions"), "deleted inside: delete")

	got = ws.request("questions", map[string]any{"action": "unsubscribe_list", "request_id": "q1"})
	assert.Equal(t, map[string]any{"action": "unsubscribe_list", "data": map[string]any{"subscription": "q1"}, "errors": []any{}, "response_status": 200.0, "request_id": "q1"}, got)
	require.NoError(t, db.Create(&pollQuestion{QuestionText: "why again", PubDate: pollBase}).Error)
	ws.assertAliveOn("questions") // no event came before the reply
}

func TestSubscribeListSnapshot(t *testing.T) {
	srv, rows := newQuestionsServer(t, func(vs *channelsapi.ViewSet[pollQuestion]) {
		vs.Ordering = "votes desc"
		vs.PageSize = 5
	})
	ws := srv.dial(t, nil)
	got := ws.request("questions", map[string]any{"action": "subscribe_list", "request_id": 7,
		"data": map[string]any{"done": true, "snapshot": true}})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	want := wantIDs(rows, func(q pollQuestion) bool { return q.Done }, func(a, b pollQuestion) int { return b.Votes - a.Votes })
	data := got["data"].(map[string]any)
	assert.Equal(t, 7.0, data["subscription"])
	assert.EqualValues(t, len(want), data["count"])
	assert.Equal(t, want[:5], idsOf(t, data["results"]), "the first page in the ViewSet's ordering")

	got = ws.request("questions", map[string]any{"action": "subscribe_list", "request_id": 8,
		"data": map[string]any{"done": true, "snapshot": true, "page_size": 50}})
	assert.Equal(t, want, idsOf(t, got["data"].(map[string]any)["results"]), "page_size sets the snapshot's size")

	got = ws.request("questions", map[string]any{"action": "subscribe_list", "request_id": 9,
		"data": map[string]any{"votes": 99, "snapshot": true}})
	assert.Equal(t, map[string]any{"subscription": 9.0, "results": []any{}, "count": 0.0}, got["data"], "an empty snapshot")
}

func TestSubscribeListErrors(t *testing.T) {
	srv, _ := newQuestionsServer(t)
	ws := srv.dial(t, nil)
	tests := []struct {
		name string
		give map[string]any
		want []any
		code float64
	}{
		{"no request_id", map[string]any{"action": "subscribe_list", "data": map[string]any{}}, []any{"request_id required"}, 400},
		{"request_id too long", map[string]any{"action": "subscribe_list", "request_id": strings.Repeat("x", 300)}, []any{"request_id too long"}, 400},
		{"ordering", map[string]any{"action": "subscribe_list", "request_id": 1, "data": map[string]any{"ordering": "votes"}},
			[]any{map[string]any{"ordering": []any{"Not allowed in a subscription."}}}, 400},
		{"page", map[string]any{"action": "subscribe_list", "request_id": 1, "data": map[string]any{"page": 2}},
			[]any{map[string]any{"page": []any{"Not allowed in a subscription."}}}, 400},
		{"unknown filter", map[string]any{"action": "subscribe_list", "request_id": 1, "data": map[string]any{"nope": 1}},
			[]any{map[string]any{"nope": []any{"Unknown filter."}}}, 400},
		{"bad value", map[string]any{"action": "subscribe_list", "request_id": 1, "data": map[string]any{"votes__gte": "x"}},
			[]any{map[string]any{"votes__gte": []any{"Enter a number."}}}, 400},
		{"snapshot not a boolean", map[string]any{"action": "subscribe_list", "request_id": 1, "data": map[string]any{"snapshot": "yes"}},
			[]any{map[string]any{"snapshot": []any{"Must be a valid boolean."}}}, 400},
		{"data not an object", map[string]any{"action": "subscribe_list", "request_id": 1, "data": []any{1}},
			[]any{map[string]any{"non_field_errors": []any{"Invalid data. Expected a dictionary, but got list."}}}, 400},
		{"unsubscribe without request_id", map[string]any{"action": "unsubscribe_list"}, []any{"request_id required"}, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ws.in(t).request("questions", tt.give)
			assert.Equal(t, tt.code, got["response_status"], "%v", got)
			assert.Equal(t, tt.want, got["errors"])
			assert.Nil(t, got["data"])
		})
	}
	t.Run("a stream without filters", func(t *testing.T) {
		srv := testModelServer(t)
		got := srv.dial(t, nil).request("testmodel", map[string]any{"action": "subscribe_list", "request_id": 1})
		assert.Equal(t, []any{"Invalid Action"}, got["errors"])
	})
	ws.assertAliveOn("questions")
	assert.Zero(t, srv.API.Stats().Subscriptions, "no failed request left a subscription")
}

func TestSubscribeListReplacesAndCounts(t *testing.T) {
	srv := newServerOn(t, openDB(t, &pollQuestion{}), func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, pollQuestions()))
	}, channelsapi.WithMaxSubscriptions(2))
	ws := srv.dial(t, nil)
	sub := func(rid any, data map[string]any) map[string]any {
		return ws.request("questions", map[string]any{"action": "subscribe_list", "request_id": rid, "data": data})
	}
	require.EqualValues(t, 200, sub("a", map[string]any{"votes": 1})["response_status"])
	require.EqualValues(t, 200, sub("a", map[string]any{"votes": 2})["response_status"], "the same request_id replaces")
	require.EqualValues(t, 200, sub("b", map[string]any{"votes": 2})["response_status"])
	assert.EqualValues(t, 429, sub("c", map[string]any{"votes": 3})["response_status"], "live queries count towards the limit")

	one := pollQuestion{QuestionText: "one", Votes: 1}
	two := pollQuestion{QuestionText: "two", Votes: 2}
	require.NoError(t, srv.DB.Create(&one).Error)
	require.NoError(t, srv.DB.Create(&two).Error)
	first, second := ws.readPayload("questions"), ws.readPayload("questions")
	assert.ElementsMatch(t, []any{"a", "b"}, []any{first["request_id"], second["request_id"]}, "one event per subscription")
	assert.Equal(t, float64(two.ID), first["pk"], "the replaced filter no longer applies")
	assert.Equal(t, float64(two.ID), second["pk"])
}

// TestSubscribeListVisibility checks enter and leave by visibility: a row
// that moves from one owner to another leaves the first's live query
// (with the last state it saw) and enters the second's.
func TestSubscribeListVisibility(t *testing.T) {
	srv := newServerOn(t, openDB(t, &pollQuestion{}), func(api *channelsapi.API, _ *gorm.DB) {
		vs := pollQuestions()
		ownQuestions(&vs)
		require.NoError(t, channelsapi.Add(api, vs))
	})
	alice, bob, root := srv.dial(t, asUser("alice")), srv.dial(t, asUser("bob")), srv.dial(t, asUser("root"))
	for _, c := range []*wsClient{alice, bob, root} {
		got := c.request("questions", map[string]any{"action": "subscribe_list", "request_id": "mine", "data": map[string]any{"votes__gte": 1}})
		require.EqualValues(t, 200, got["response_status"])
	}
	q := pollQuestion{QuestionText: "q", Votes: 1, Owner: "alice"}
	require.NoError(t, srv.DB.Create(&q).Error)
	assert.Equal(t, queryEvent(t, "create", q, "mine"), alice.readPayload("questions"))
	assert.Equal(t, queryEvent(t, "create", q, "mine"), root.readPayload("questions"))

	was := q
	require.NoError(t, srv.DB.Model(&q).Updates(map[string]any{"owner": "bob", "question_text": "now bob's"}).Error)
	q.Owner, q.QuestionText = "bob", "now bob's"
	assert.Equal(t, queryEvent(t, "delete", was, "mine"), alice.readPayload("questions"), "out of sight: a delete with the state alice saw")
	assert.Equal(t, queryEvent(t, "create", q, "mine"), bob.readPayload("questions"), "into sight: a create")
	assert.Equal(t, queryEvent(t, "update", q, "mine"), root.readPayload("questions"))

	// A sentinel of alice's shows she received nothing else meanwhile.
	s := pollQuestion{QuestionText: "sentinel", Votes: 1, Owner: "alice"}
	require.NoError(t, srv.DB.Create(&s).Error)
	assert.Equal(t, queryEvent(t, "create", s, "mine"), alice.readPayload("questions"))
}

// TestScopeFilterEventsRunNoQuery checks that a stream guarded by a
// ScopeFilter authorizes events without a database query, where the same
// rule written as a Scope runs one per event.
func TestScopeFilterEventsRunNoQuery(t *testing.T) {
	for _, declarative := range []bool{true, false} {
		t.Run(fmt.Sprintf("ScopeFilter=%v", declarative), func(t *testing.T) {
			db := openDB(t, &pollQuestion{})
			var reads sync.Map // statements run by the delivery, by SQL
			count := func(db *gorm.DB) {
				if strings.Contains(db.Statement.SQL.String(), "channelsapi_row") {
					n, _ := reads.LoadOrStore("n", new(int))
					*(n.(*int))++
				}
			}
			// Before the API serves: GORM's callbacks may not be
			// registered while statements run.
			require.NoError(t, db.Callback().Raw().After("gorm:raw").Register("test:count_raw", count))
			require.NoError(t, db.Callback().Query().After("gorm:query").Register("test:count_query", count))
			srv := newServerOn(t, db, func(api *channelsapi.API, db *gorm.DB) {
				vs := pollQuestions()
				ownQuestions(&vs)
				if !declarative {
					vs.ScopeFilter = nil
					vs.Scope = func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
						return db.Where("owner = ?", r.Header.Get("X-User")), nil
					}
				}
				require.NoError(t, channelsapi.Add(api, vs))
			})
			alice := srv.dial(t, asUser("alice"))
			alice.subscribeTo("questions", "create", "update")
			got := alice.request("questions", map[string]any{"action": "subscribe_list", "request_id": "l", "data": map[string]any{}})
			require.EqualValues(t, 200, got["response_status"])
			for i := range 5 {
				q := pollQuestion{QuestionText: fmt.Sprint(i), Owner: "alice"}
				require.NoError(t, srv.DB.Create(&q).Error)
				require.NoError(t, srv.DB.Model(&q).Update("votes", i).Error)
			}
			for range 20 { // a group event and a live-query event per write
				alice.readPayload("questions")
			}
			n, ok := reads.Load("n")
			if declarative {
				assert.False(t, ok, "no query per event")
			} else {
				require.True(t, ok, "the Scope runs a query per event")
				assert.GreaterOrEqual(t, *(n.(*int)), 10)
			}
		})
	}
}

// liveClient is a connection holding live queries, whose frames a reader
// goroutine applies: it keeps each subscription's view (the snapshot, then
// the events applied by pk) and fails on anything that does not fit.
type liveClient struct {
	user   string
	strict bool // every event must fit the view: no create of a row it has, no update or delete of one it lacks
	conn   *websocket.Conn
	sees   func(map[string]any) bool // whether user may see a row state

	mu       sync.Mutex
	views    map[string]map[float64]map[string]any // request id -> pk -> row
	replies  chan map[string]any
	problems []string
	sentinel chan struct{}
	done     chan struct{}
}

func dialLive(t *testing.T, srv *testServer, user string, strict bool) *liveClient {
	conn, resp, err := websocket.DefaultDialer.Dial(srv.WSURL, asUser(user))
	require.NoError(t, err)
	_ = resp.Body.Close()
	c := &liveClient{user: user, strict: strict, conn: conn, views: map[string]map[float64]map[string]any{},
		replies: make(chan map[string]any, 1), sentinel: make(chan struct{}), done: make(chan struct{})}
	c.sees = func(row map[string]any) bool { return user == "root" || row["owner"] == user }
	go c.read()
	t.Cleanup(func() {
		_ = conn.Close()
		<-c.done
	})
	return c
}

func (c *liveClient) fail(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(c.user+": "+format, args...))
}

func (c *liveClient) read() {
	defer close(c.done)
	for {
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				c.mu.Lock()
				c.fail("closed by the server: %d %s", ce.Code, ce.Text)
				c.mu.Unlock()
			}
			return
		}
		var f struct{ Payload map[string]any }
		if err := json.Unmarshal(b, &f); err != nil {
			continue
		}
		p := f.Payload
		if _, reply := p["response_status"]; reply {
			c.applySnapshot(p)
			c.replies <- p
			continue
		}
		c.apply(p)
	}
}

// apply applies an event to its subscription's view.
func (c *liveClient) apply(p map[string]any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rid, _ := p["request_id"].(string)
	view := c.views[rid]
	pk, _ := p["pk"].(float64)
	row, _ := p["data"].(map[string]any)
	if rid == "sentinel" {
		if row["owner"] == c.user || (c.user == "root" && row["owner"] == "bob") {
			close(c.sentinel)
		}
		return
	}
	if view == nil {
		c.fail("event of an unknown subscription %v", p)
		return
	}
	if !c.sees(row) {
		c.fail("received a row it may not see: %v", p)
	}
	_, had := view[pk]
	switch p["action"] {
	case "create":
		if had && c.strict {
			c.fail("%s: create of %v, which it has", rid, pk)
		}
		view[pk] = row
	case "update":
		if !had && c.strict {
			c.fail("%s: update of %v, which it does not have", rid, pk)
		}
		view[pk] = row
	case "delete":
		if !had && c.strict {
			c.fail("%s: delete of %v, which it does not have", rid, pk)
		} else if had && c.strict && !jsonEqual(view[pk], row) {
			c.fail("%s: delete of %v carries %v, not the last state it saw %v", rid, pk, row, view[pk])
		}
		delete(view, pk)
	default:
		c.fail("unexpected frame %v", p)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// subscribe starts the live query rid on filter with a snapshot.
func (c *liveClient) subscribe(t *testing.T, rid string, filter map[string]any, snapshot bool) {
	data := map[string]any{"snapshot": snapshot, "page_size": 1000}
	for k, v := range filter {
		data[k] = v
	}
	if !snapshot {
		delete(data, "page_size")
	}
	c.mu.Lock()
	if rid != "sentinel" {
		c.views[rid] = map[float64]map[string]any{} // events may come before the reply
	}
	c.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"stream": "questions", "payload": map[string]any{"action": "subscribe_list", "request_id": rid, "data": data}})
	require.NoError(t, c.conn.WriteMessage(websocket.TextMessage, b))
	var reply map[string]any
	select {
	case reply = <-c.replies:
	case <-time.After(readTimeout):
		t.Fatalf("%s: no reply to subscribe_list %s", c.user, rid)
	}
	require.EqualValues(t, 200, reply["response_status"], "%v", reply)
}

// applySnapshot fills a subscription's view from the reply, before the
// reader goes on to the events that follow it.
func (c *liveClient) applySnapshot(p map[string]any) {
	d, _ := p["data"].(map[string]any)
	rows, ok := d["results"].([]any)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rid, _ := p["request_id"].(string)
	if len(rows) != int(d["count"].(float64)) {
		c.fail("%s: the snapshot does not fit one page", rid)
	}
	view := c.views[rid]
	for pk, row := range view {
		c.fail("%s: event about %v before the snapshot's reply: %v", rid, pk, row)
	}
	for _, r := range rows {
		row := r.(map[string]any)
		if !c.sees(row) {
			c.fail("snapshot holds a row it may not see: %v", row)
		}
		view[row["id"].(float64)] = row
	}
}

// TestLiveQueriesModel: four writers move 500 rows in and out of 20 live
// queries held by three users with different scopes, some subscribed while
// the writers run. At the end every view equals a fresh list of its query,
// and no client ever received a row it could not retrieve. On one instance
// no event may break a view's order (no duplicate, no gap); with Redis, the
// events of changes committed just before a snapshot may repeat it
// (docs/PROTOCOL.md 9), and the views must still converge.
func TestLiveQueriesModel(t *testing.T) {
	setup := func(api *channelsapi.API, _ *gorm.DB) {
		vs := pollQuestions()
		ownQuestions(&vs)
		require.NoError(t, channelsapi.Add(api, vs))
	}
	// Each write is up to 8 frames for root: this is no test of slow clients.
	queue := channelsapi.WithQueueSize(1 << 14)
	t.Run("one instance", func(t *testing.T) {
		srv := newServerOn(t, openDB(t, &pollQuestion{}), setup, queue)
		runLiveModel(t, []*testServer{srv}, !outboxAtLeastOnce())
	})
	t.Run("two instances over Redis", func(t *testing.T) {
		url := redisURL(t)
		dbs := openShared(t, 2, &pollQuestion{})
		prefix := testPrefix()
		a := newServerOn(t, dbs[0], setup, queue, withRedis(t, url, prefix))
		b := newServerOn(t, dbs[1], setup, queue, withRedis(t, url, prefix))
		runLiveModel(t, []*testServer{a, b}, false)
	})
}

func runLiveModel(t *testing.T, servers []*testServer, strict bool) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))

	owners := []string{"alice", "bob", "carol"}
	texts := []string{"why", "Why not", "what", "python why", "PYTHON", "other"}
	filters := []map[string]any{
		{}, {"votes__gte": 5}, {"votes__lt": 3}, {"votes__range": []any{2, 7}}, {"done": true},
		{"question_text__icontains": "why"}, {"question_text__istartswith": "py"}, {"votes__in": []any{1, 4, 9}},
		{"owner": "alice"}, {"owner": "bob", "done": false}, {"closed_at__isnull": true}, {"search": "python why"},
		{"votes__gte": 3, "question_text__contains": "why"}, {"question_text": "what"}, {"votes": 0},
		{"pub_date__gte": pollBase.Format(time.RFC3339)}, {"done": false, "votes__lte": 6}, {"owner": "carol"},
		{"question_text__in": []any{"why", "what"}}, {"votes__gt": 8},
	}
	users := []string{"alice", "bob", "root"}
	var clients []*liveClient
	for i, u := range users {
		for j := range 2 {
			c := dialLive(t, servers[(i+j)%len(servers)], u, strict)
			c.subscribe(t, "sentinel", map[string]any{"question_text__startswith": "SENTINEL"}, false)
			clients = append(clients, c)
		}
	}
	// Each filter is held by one client, and by a second of another user.
	type held struct {
		c   *liveClient
		rid string
		f   map[string]any
	}
	var early, late []held
	for i, f := range filters {
		for j, c := range []*liveClient{clients[i%len(clients)], clients[(i+3)%len(clients)]} {
			h := held{c, fmt.Sprintf("q%d-%d", i, j), f}
			if (i+j)%2 == 0 {
				early = append(early, h)
			} else {
				late = append(late, h)
			}
		}
	}
	newRow := func(r *rand.Rand) pollQuestion {
		q := pollQuestion{QuestionText: texts[r.IntN(len(texts))], Votes: r.IntN(11), Done: r.IntN(2) == 0,
			Owner: owners[r.IntN(len(owners))], PubDate: pollBase.Add(time.Duration(r.IntN(48)-24) * time.Hour)}
		if r.IntN(2) == 0 {
			c := q.PubDate
			q.ClosedAt = &c
		}
		return q
	}
	for range 50 {
		q := newRow(rng)
		require.NoError(t, servers[0].DB.Create(&q).Error)
	}
	for _, h := range early {
		h.c.subscribe(t, h.rid, h.f, true)
	}

	const writers, ops = 4, 125
	started := make(chan struct{})
	errs := make(chan error, writers)
	for w := range writers {
		r := rand.New(rand.NewPCG(uint64(seed), uint64(w+2)))
		db := servers[w%len(servers)].DB
		go func() {
			<-started
			for i := range ops {
				if err := writeOne(db, r, newRow, i); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	close(started)
	for _, h := range late { // while the writers run
		h.c.subscribe(t, h.rid, h.f, true)
	}
	for range writers {
		require.NoError(t, <-errs)
	}

	for _, owner := range []string{"alice", "bob"} {
		require.NoError(t, servers[0].DB.Create(&pollQuestion{QuestionText: "SENTINEL", Owner: owner}).Error)
	}
	for _, c := range clients {
		select {
		case <-c.sentinel:
		case <-time.After(readTimeout):
			c.mu.Lock()
			t.Fatalf("%s never received its sentinel: %v", c.user, c.problems)
			c.mu.Unlock()
		}
	}
	for _, h := range append(early, late...) {
		values := url.Values{"page_size": {"1000"}}
		for k, v := range h.f {
			switch v := v.(type) {
			case []any:
				var parts []string
				for _, e := range v {
					parts = append(parts, fmt.Sprint(e))
				}
				values.Set(k, strings.Join(parts, ","))
			default:
				values.Set(k, fmt.Sprint(v))
			}
		}
		status, body := servers[0].doREST(t, "GET", "/questions?"+values.Encode(), "", "X-User", h.c.user)
		require.Equal(t, http.StatusOK, status, "%v", body)
		want := map[float64]map[string]any{}
		for _, r := range body.(map[string]any)["results"].([]any) {
			row := r.(map[string]any)
			if row["question_text"] != "SENTINEL" {
				want[row["id"].(float64)] = row
			}
		}
		h.c.mu.Lock()
		got := h.c.views[h.rid]
		for pk, row := range got {
			if row["question_text"] == "SENTINEL" {
				delete(got, pk)
			}
		}
		assert.True(t, jsonEqual(want, got), "%s %s %v: view differs from a fresh list:\nwant %v\ngot  %v", h.c.user, h.rid, h.f, want, got)
		h.c.mu.Unlock()
	}
	for _, c := range clients {
		c.mu.Lock()
		assert.Empty(t, c.problems)
		c.mu.Unlock()
	}
}

// writeOne makes one random write: a create, an update that may move the
// row in or out of filters or to another owner, a bulk update, or a delete.
func writeOne(db *gorm.DB, r *rand.Rand, newRow func(*rand.Rand) pollQuestion, i int) error {
	var ids []uint
	if err := db.Model(&pollQuestion{}).Order("id").Limit(200).Pluck("id", &ids).Error; err != nil {
		return err
	}
	pick := func() uint {
		if len(ids) == 0 {
			return 0
		}
		return ids[r.IntN(len(ids))]
	}
	switch op := r.IntN(10); {
	case op < 3 || len(ids) == 0:
		q := newRow(r)
		return db.Create(&q).Error
	case op < 6:
		return db.Model(&pollQuestion{ID: pick()}).Updates(map[string]any{"votes": r.IntN(11), "done": r.IntN(2) == 0}).Error
	case op < 7:
		owners := []string{"alice", "bob", "carol"}
		return db.Model(&pollQuestion{ID: pick()}).Update("owner", owners[r.IntN(3)]).Error
	case op < 8:
		texts := []string{"why", "what", "python", "Why Python"}
		var q pollQuestion
		if err := db.Take(&q, pick()).Error; err != nil {
			return nil // deleted meanwhile
		}
		q.QuestionText = texts[r.IntN(len(texts))]
		q.ClosedAt = nil
		return db.Save(&q).Error
	case op < 9:
		return db.Model(&pollQuestion{}).Where("votes = ?", r.IntN(11)).Where("id % 7 = ?", i%7).Update("done", r.IntN(2) == 0).Error
	default:
		return db.Delete(&pollQuestion{}, pick()).Error
	}
}

// TestScopeFilterGroupEvents checks events of the channels-api
// subscriptions on a stream guarded by a ScopeFilter: each user receives
// the rows in their scope, and a row that leaves it arrives as a delete.
func TestScopeFilterGroupEvents(t *testing.T) {
	srv := newServerOn(t, openDB(t, &pollQuestion{}), func(api *channelsapi.API, _ *gorm.DB) {
		vs := pollQuestions()
		ownQuestions(&vs)
		require.NoError(t, channelsapi.Add(api, vs))
	})
	alice, bob := srv.dial(t, asUser("alice")), srv.dial(t, asUser("bob"))
	alice.subscribeTo("questions", "create", "update", "delete")
	bob.subscribeTo("questions", "create", "update", "delete")
	group := func(action string, q pollQuestion) map[string]any {
		return map[string]any{"action": action, "pk": float64(q.ID), "data": jsonOf(t, q), "model": "polls.question"}
	}
	hers := pollQuestion{QuestionText: "hers", Owner: "alice"}
	his := pollQuestion{QuestionText: "his", Owner: "bob"}
	require.NoError(t, srv.DB.Create(&hers).Error)
	require.NoError(t, srv.DB.Create(&his).Error)
	assert.Equal(t, group("create", hers), alice.readPayload("questions"))
	assert.Equal(t, group("create", his), bob.readPayload("questions"))

	was := hers
	require.NoError(t, srv.DB.Model(&hers).Update("owner", "bob").Error)
	hers.Owner = "bob"
	assert.Equal(t, group("delete", was), alice.readPayload("questions"), "out of her sight: a delete of what she saw")
	assert.Equal(t, group("update", hers), bob.readPayload("questions"))
	require.NoError(t, srv.DB.Delete(&hers).Error)
	assert.Equal(t, group("delete", hers), bob.readPayload("questions"))
	alice.assertAliveOn("questions") // nothing more for alice
}

// member is whom a user's questions belong to, looked up by a ScopeFilter.
type member struct {
	ID    uint `gorm:"primaryKey"`
	User  string
	Owner string
}

// TestSnapshotWithAScopeFilterThatQueries: on SQLite with one connection in
// the pool, a ScopeFilter that looks something up in the database must not
// wait for the connection a snapshot holds.
func TestSnapshotWithAScopeFilterThatQueries(t *testing.T) {
	db := openSQLite(t, "", &pollQuestion{}, &member{})
	sqlDB, err := db.DB()
	require.NoError(t, err)
	sqlDB.SetMaxOpenConns(1)
	require.NoError(t, db.Create(&member{User: "alice", Owner: "alice"}).Error)
	srv := newServerOn(t, db, func(api *channelsapi.API, db *gorm.DB) {
		vs := pollQuestions()
		vs.ScopeFilter = func(ctx context.Context, r *channelsapi.Request) (channelsapi.Filter, error) {
			var m member
			if err := db.WithContext(ctx).Where("user = ?", r.Header.Get("X-User")).Take(&m).Error; err != nil {
				return nil, err
			}
			return channelsapi.Filter{"owner": m.Owner}, nil
		}
		require.NoError(t, channelsapi.Add(api, vs))
	})
	mine := pollQuestion{QuestionText: "mine", Owner: "alice"}
	require.NoError(t, db.Create(&mine).Error)
	require.NoError(t, db.Create(&pollQuestion{QuestionText: "bob's", Owner: "bob"}).Error)
	ws := srv.dial(t, asUser("alice"))
	got := ws.request("questions", map[string]any{"action": "subscribe_list", "request_id": "s", "data": map[string]any{"snapshot": true}})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	assert.Equal(t, []float64{float64(mine.ID)}, idsOf(t, got["data"].(map[string]any)["results"]))
}

// TestRowsBeforeReadOnlyWhenALiveQueryMayChange checks that an update of
// a stream serving live queries reads its rows first when it may assign a
// column a filter reads, and only then (on a stream that authorizes no
// event per recipient).
func TestRowsBeforeReadOnlyWhenALiveQueryMayChange(t *testing.T) {
	var reads sync.Map
	db := openDB(t, &pollQuestion{})
	// Before the API serves: GORM's callbacks may not be registered while
	// statements run.
	require.NoError(t, db.Callback().Query().Before("gorm:query").Register("test:count_reads", func(db *gorm.DB) {
		if v, ok := db.Statement.Context.Value(readsKey{}).(string); ok {
			n, _ := reads.LoadOrStore(v, new(int))
			*(n.(*int))++
		}
	}))
	srv := newServerOn(t, db, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, pollQuestions()))
	})
	q := pollQuestion{QuestionText: "q"}
	require.NoError(t, srv.DB.Create(&q).Error)
	update := func(name string, write func(db *gorm.DB) error) int {
		ctx := context.WithValue(context.Background(), readsKey{}, name)
		require.NoError(t, write(srv.DB.WithContext(ctx)))
		n, ok := reads.Load(name)
		if !ok {
			return 0
		}
		return *(n.(*int))
	}
	assert.Equal(t, 1, update("votes", func(db *gorm.DB) error { return db.Model(&q).Update("votes", 1).Error }), "a filtered column")
	assert.Equal(t, 1, update("struct", func(db *gorm.DB) error { return db.Model(&q).Updates(pollQuestion{Secret: "x"}).Error }), "a struct writes any field")
	assert.Equal(t, 1, update("save", func(db *gorm.DB) error { return db.Save(&q).Error }), "Save writes every column")
	assert.Equal(t, 0, update("secret", func(db *gorm.DB) error { return db.Model(&q).Update("secret", "y").Error }), "a column no filter reads")
	assert.Equal(t, 0, update("selected", func(db *gorm.DB) error {
		return db.Model(&q).Select("secret").Updates(pollQuestion{Secret: "z", Votes: 9}).Error
	}), "a selection of such columns")
}

type readsKey struct{}
