package channelsapi_test

// This file tests query.go and query_sql.go over both transports: the list
// queries of PROTOCOL.md section 8 (filters, ordering, search), their
// errors, REST and WebSocket answering the same rows, the Request's Query,
// and the ScopeFilter.

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// pollQuestion is a question with a field of each kind the grammar reads.
type pollQuestion struct {
	ID           uint       `json:"id" gorm:"primaryKey"`
	QuestionText string     `json:"question_text"`
	PubDate      time.Time  `json:"pub_date"`
	Votes        int        `json:"votes"`
	Done         bool       `json:"done"`
	ClosedAt     *time.Time `json:"closed_at"`
	Owner        string     `json:"owner"`
	Secret       string     `json:"-"`
}

func pollQuestions() channelsapi.ViewSet[pollQuestion] {
	return channelsapi.ViewSet[pollQuestion]{
		Stream: "questions",
		Label:  "polls.question",
		Filters: map[string][]string{
			"question_text": {"exact", "iexact", "in", "contains", "icontains", "startswith", "istartswith"},
			"pub_date":      {"exact", "gt", "gte", "lt", "lte", "range"},
			"votes":         {"exact", "in", "gt", "gte", "lt", "lte", "range"},
			"done":          {"exact"},
			"closed_at":     {"isnull"},
			"owner":         {"exact"},
		},
		OrderingFields: []string{"pub_date", "votes", "id"},
		SearchFields:   []string{"question_text", "owner"},
		PageSize:       100,
	}
}

var pollBase = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// seedQuestions writes 40 questions whose values vary independently.
func seedQuestions(tb testing.TB, db *gorm.DB) []pollQuestion {
	tb.Helper()
	texts := []string{"Why is the sky blue?", "why not Python?", "What's new?", "WHY python", "Is 100% sure?", "under_score", "Straße", "python_tips"}
	owners := []string{"alice", "bob", "carol"}
	var qs []pollQuestion
	for i := range 40 {
		q := pollQuestion{
			QuestionText: texts[i%len(texts)],
			PubDate:      pollBase.AddDate(0, 0, i-20).Add(time.Duration(i) * time.Hour),
			Votes:        (i * 7) % 13,
			Done:         i%3 == 0,
			Owner:        owners[i%len(owners)],
			Secret:       fmt.Sprintf("secret-%d", i),
		}
		if i%4 == 0 {
			closed := q.PubDate.Add(48 * time.Hour)
			q.ClosedAt = &closed
		}
		require.NoError(tb, db.Create(&q).Error)
		qs = append(qs, q)
	}
	return qs
}

func newQuestionsServer(tb testing.TB, mutate ...func(*channelsapi.ViewSet[pollQuestion])) (*testServer, []pollQuestion) {
	tb.Helper()
	srv := newServerOn(tb, openDB(tb, &pollQuestion{}), func(api *channelsapi.API, _ *gorm.DB) {
		vs := pollQuestions()
		for _, m := range mutate {
			m(&vs)
		}
		require.NoError(tb, channelsapi.Add(api, vs))
	})
	return srv, seedQuestions(tb, srv.DB)
}

// restIDs lists path over REST and returns the ids of the results.
func restIDs(tb testing.TB, srv *testServer, path string) []float64 {
	tb.Helper()
	status, body := srv.doREST(tb, "GET", path, "")
	require.Equal(tb, http.StatusOK, status, "GET %s: %v", path, body)
	return idsOf(tb, body.(map[string]any)["results"])
}

// socketIDs lists with data over the WebSocket and returns the ids.
func socketIDs(tb testing.TB, ws *wsClient, data map[string]any) []float64 {
	tb.Helper()
	got := ws.request("questions", map[string]any{"action": "list", "data": data, "request_id": 1})
	require.EqualValues(tb, http.StatusOK, got["response_status"], "list %v: %v", data, got)
	return idsOf(tb, got["data"])
}

func idsOf(tb testing.TB, rows any) []float64 {
	tb.Helper()
	list, ok := rows.([]any)
	require.True(tb, ok, "rows %v", rows)
	ids := []float64{}
	for _, r := range list {
		ids = append(ids, r.(map[string]any)["id"].(float64))
	}
	return ids
}

// wantIDs returns the ids of the rows keep selects, in the order less
// gives (id order when nil).
func wantIDs(rows []pollQuestion, keep func(pollQuestion) bool, less func(a, b pollQuestion) int) []float64 {
	var sel []pollQuestion
	for _, r := range rows {
		if keep(r) {
			sel = append(sel, r)
		}
	}
	slices.SortStableFunc(sel, func(a, b pollQuestion) int {
		if less != nil {
			if c := less(a, b); c != 0 {
				return c
			}
		}
		return int(a.ID) - int(b.ID)
	})
	ids := []float64{}
	for _, r := range sel {
		ids = append(ids, float64(r.ID))
	}
	return ids
}

func TestListQueriesOnBothTransports(t *testing.T) {
	srv, rows := newQuestionsServer(t)
	ws := srv.dial(t, nil)
	lower := strings.ToLower
	day := func(d int) time.Time { return pollBase.AddDate(0, 0, d) }
	tests := []struct {
		name string
		rest string         // query string
		data map[string]any // WebSocket list data
		keep func(pollQuestion) bool
		less func(a, b pollQuestion) int
	}{
		{"exact without lookup", "question_text=WHY+python", map[string]any{"question_text": "WHY python"},
			func(q pollQuestion) bool { return q.QuestionText == "WHY python" }, nil},
		{"iexact", "question_text__iexact=why+PYTHON", map[string]any{"question_text__iexact": "why PYTHON"},
			func(q pollQuestion) bool { return lower(q.QuestionText) == "why python" }, nil},
		{"icontains", "question_text__icontains=why", map[string]any{"question_text__icontains": "why"},
			func(q pollQuestion) bool { return strings.Contains(lower(q.QuestionText), "why") }, nil},
		{"contains is case-sensitive", "question_text__contains=Why", map[string]any{"question_text__contains": "Why"},
			func(q pollQuestion) bool { return strings.Contains(q.QuestionText, "Why") }, nil},
		{"contains a wildcard literally", "question_text__contains=%25", map[string]any{"question_text__contains": "%"},
			func(q pollQuestion) bool { return strings.Contains(q.QuestionText, "%") }, nil},
		{"icontains an underscore literally", "question_text__icontains=_", map[string]any{"question_text__icontains": "_"},
			func(q pollQuestion) bool { return strings.Contains(q.QuestionText, "_") }, nil},
		{"startswith", "question_text__startswith=why", map[string]any{"question_text__startswith": "why"},
			func(q pollQuestion) bool { return strings.HasPrefix(q.QuestionText, "why") }, nil},
		{"istartswith", "question_text__istartswith=WH", map[string]any{"question_text__istartswith": "WH"},
			func(q pollQuestion) bool { return strings.HasPrefix(lower(q.QuestionText), "wh") }, nil},
		{"in, comma-separated and as an array", "question_text__in=Straße,What's+new%3F", map[string]any{"question_text__in": []any{"Straße", "What's new?"}},
			func(q pollQuestion) bool { return q.QuestionText == "Straße" || q.QuestionText == "What's new?" }, nil},
		{"in of numbers as a string", "votes__in=1,2,3", map[string]any{"votes__in": "1,2,3"},
			func(q pollQuestion) bool { return q.Votes >= 1 && q.Votes <= 3 }, nil},
		{"gte and lte together", "votes__gte=4&votes__lte=6", map[string]any{"votes__gte": 4, "votes__lte": "6"},
			func(q pollQuestion) bool { return q.Votes >= 4 && q.Votes <= 6 }, nil},
		{"gt and lt", "votes__gt=10&votes__lt=12", map[string]any{"votes__gt": 10, "votes__lt": 12},
			func(q pollQuestion) bool { return q.Votes == 11 }, nil},
		{"range", "votes__range=2,5", map[string]any{"votes__range": []any{2, 5}},
			func(q pollQuestion) bool { return q.Votes >= 2 && q.Votes <= 5 }, nil},
		{"boolean", "done=true", map[string]any{"done": true},
			func(q pollQuestion) bool { return q.Done }, nil},
		{"boolean as 0", "done=0", map[string]any{"done": "0"},
			func(q pollQuestion) bool { return !q.Done }, nil},
		{"isnull", "closed_at__isnull=true", map[string]any{"closed_at__isnull": true},
			func(q pollQuestion) bool { return q.ClosedAt == nil }, nil},
		{"isnull false", "closed_at__isnull=false", map[string]any{"closed_at__isnull": false},
			func(q pollQuestion) bool { return q.ClosedAt != nil }, nil},
		{"time gte in another zone", "pub_date__gte=2026-01-01T05:00:00%2B05:00", map[string]any{"pub_date__gte": "2026-01-01T05:00:00+05:00"},
			func(q pollQuestion) bool { return !q.PubDate.Before(day(0)) }, nil},
		{"time range of dates", "pub_date__range=2025-12-25,2026-01-05", map[string]any{"pub_date__range": "2025-12-25,2026-01-05"},
			func(q pollQuestion) bool { return !q.PubDate.Before(day(-7)) && !q.PubDate.After(day(4)) }, nil},
		{"time exact", "pub_date=" + url.QueryEscape(rows[3].PubDate.Format(time.RFC3339Nano)), map[string]any{"pub_date": rows[3].PubDate.Format(time.RFC3339Nano)},
			func(q pollQuestion) bool { return q.PubDate.Equal(rows[3].PubDate) }, nil},
		{"search: every term in some field", "search=python+alice", map[string]any{"search": "python alice"},
			func(q pollQuestion) bool {
				return strings.Contains(lower(q.QuestionText+" "+q.Owner), "python") &&
					(strings.Contains(lower(q.QuestionText), "alice") || strings.Contains(q.Owner, "alice"))
			}, nil},
		{"search terms split on commas", "search=WHY,bob", map[string]any{"search": "WHY,bob"},
			func(q pollQuestion) bool {
				return (strings.Contains(lower(q.QuestionText), "why") || strings.Contains(q.Owner, "why")) &&
					(strings.Contains(lower(q.QuestionText), "bob") || strings.Contains(q.Owner, "bob"))
			}, nil},
		{"ordering descending, ties by pk", "ordering=-votes", map[string]any{"ordering": "-votes"},
			func(pollQuestion) bool { return true }, func(a, b pollQuestion) int { return b.Votes - a.Votes }},
		{"ordering on two fields", "ordering=votes,-pub_date", map[string]any{"ordering": "votes,-pub_date"},
			func(pollQuestion) bool { return true }, func(a, b pollQuestion) int {
				if a.Votes != b.Votes {
					return a.Votes - b.Votes
				}
				return b.PubDate.Compare(a.PubDate)
			}},
		{"an empty value is not a filter", "votes=&question_text__icontains=", map[string]any{"votes": "", "question_text__icontains": nil},
			func(pollQuestion) bool { return true }, nil},
		{"everything at once", "question_text__icontains=why&pub_date__gte=2025-12-20T00:00:00Z&ordering=-pub_date,id&search=python",
			map[string]any{"question_text__icontains": "why", "pub_date__gte": "2025-12-20T00:00:00Z", "ordering": "-pub_date,id", "search": "python"},
			func(q pollQuestion) bool {
				t := lower(q.QuestionText)
				return strings.Contains(t, "why") && !q.PubDate.Before(day(-12)) && strings.Contains(lower(q.QuestionText+q.Owner), "python")
			}, func(a, b pollQuestion) int { return b.PubDate.Compare(a.PubDate) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := wantIDs(rows, tt.keep, tt.less)
			require.NotEqual(t, len(rows), len(want)+1, "the case selects something other than all but one")
			assert.Equal(t, want, restIDs(t, srv, "/questions?"+tt.rest), "REST")
			assert.Equal(t, want, socketIDs(t, ws.in(t), tt.data), "WebSocket")
		})
	}
}

func TestListQueryExampleOfTheProtocol(t *testing.T) {
	srv, rows := newQuestionsServer(t, func(vs *channelsapi.ViewSet[pollQuestion]) { vs.PageSize = 2 })
	want := wantIDs(rows, func(q pollQuestion) bool {
		return strings.Contains(strings.ToLower(q.QuestionText), "why") && !q.PubDate.Before(pollBase) &&
			strings.Contains(strings.ToLower(q.QuestionText+" "+q.Owner), "python")
	}, func(a, b pollQuestion) int { return b.PubDate.Compare(a.PubDate) })
	require.Greater(t, len(want), 2, "page 2 has rows")

	status, body := srv.doREST(t, "GET", "/questions?question_text__icontains=why&pub_date__gte=2026-01-01T00:00:00Z&ordering=-pub_date,id&search=python&page=2", "")
	require.Equal(t, http.StatusOK, status, "%v", body)
	page := body.(map[string]any)
	assert.EqualValues(t, len(want), page["count"])
	assert.Equal(t, want[2:min(4, len(want))], idsOf(t, page["results"]))
	for _, link := range []string{"next", "previous"} {
		if page[link] == nil {
			continue
		}
		u, err := url.Parse(page[link].(string))
		require.NoError(t, err)
		q := u.Query()
		assert.Equal(t, "why", q.Get("question_text__icontains"), "%s keeps every query key", link)
		assert.Equal(t, "2026-01-01T00:00:00Z", q.Get("pub_date__gte"))
		assert.Equal(t, "-pub_date,id", q.Get("ordering"))
		assert.Equal(t, "python", q.Get("search"))
	}
	assert.NotNil(t, page["previous"])

	ws := srv.dial(t, nil)
	got := ws.request("questions", map[string]any{"action": "list", "request_id": 4, "data": map[string]any{
		"question_text__icontains": "why", "ordering": "-pub_date,id", "search": "python", "page": 2, "pub_date__gte": "2026-01-01T00:00:00Z",
	}})
	require.EqualValues(t, 200, got["response_status"], "%v", got)
	assert.Equal(t, want[2:min(4, len(want))], idsOf(t, got["data"]))
	assert.Equal(t, map[string]any{"count": float64(len(want)), "page": 2.0, "page_size": 2.0, "num_pages": float64((len(want) + 1) / 2)}, got["meta"])
}

func TestListQueryErrors(t *testing.T) {
	srv, _ := newQuestionsServer(t)
	ws := srv.dial(t, nil)
	tests := []struct {
		name string
		rest string
		data map[string]any
		want map[string]any // the field errors
	}{
		{"unknown field", "nope=1", map[string]any{"nope": 1}, map[string]any{"nope": []any{"Unknown filter."}}},
		{"field hidden from JSON", "secret=x", map[string]any{"secret": "x"}, map[string]any{"secret": []any{"Unknown filter."}}},
		{"undeclared lookup", "votes__icontains=1", map[string]any{"votes__icontains": 1}, map[string]any{"votes__icontains": []any{"Unknown filter."}}},
		{"unknown lookup", "votes__regex=1", map[string]any{"votes__regex": "1"}, map[string]any{"votes__regex": []any{"Unknown filter."}}},
		{"declared field, undeclared lookup", "done__in=true", map[string]any{"done__in": []any{true}}, map[string]any{"done__in": []any{"Unknown filter."}}},
		{"ordering field not allowed", "ordering=question_text", map[string]any{"ordering": "question_text"}, map[string]any{"ordering": []any{`Unknown ordering field "question_text".`}}},
		{"ordering on a hidden field", "ordering=-secret", map[string]any{"ordering": "-secret"}, map[string]any{"ordering": []any{`Unknown ordering field "secret".`}}},
		{"not a number", "votes__gte=abc", map[string]any{"votes__gte": "abc"}, map[string]any{"votes__gte": []any{"Enter a number."}}},
		{"a fraction for an integer", "votes=1.5", map[string]any{"votes": 1.5}, map[string]any{"votes": []any{"Enter a number."}}},
		{"an integer out of range", "votes=99999999999999999999", map[string]any{"votes": "99999999999999999999"}, map[string]any{"votes": []any{"Enter a number."}}},
		{"not a time", "pub_date__gte=yesterday", map[string]any{"pub_date__gte": "yesterday"}, map[string]any{"pub_date__gte": []any{"Enter a valid date/time."}}},
		{"not a boolean", "done=maybe", map[string]any{"done": "maybe"}, map[string]any{"done": []any{"Must be a valid boolean."}}},
		{"isnull not a boolean", "closed_at__isnull=2", map[string]any{"closed_at__isnull": 2}, map[string]any{"closed_at__isnull": []any{"Must be a valid boolean."}}},
		{"range of one value", "votes__range=1", map[string]any{"votes__range": []any{1}}, map[string]any{"votes__range": []any{"Enter two values."}}},
		{"range of three values", "votes__range=1,2,3", map[string]any{"votes__range": "1,2,3"}, map[string]any{"votes__range": []any{"Enter two values."}}},
		{"a bad value in a list", "votes__in=1,x", map[string]any{"votes__in": []any{1, "x"}}, map[string]any{"votes__in": []any{"Enter a number."}}},
		{"a null character", "question_text=a%00b", map[string]any{"question_text": "a\x00b"}, map[string]any{"question_text": []any{"Null characters are not allowed."}}},
		{"a key of subscribe_list", "snapshot=true", map[string]any{"snapshot": true}, map[string]any{"snapshot": []any{"Unknown filter."}}},
		{"two errors at once", "nope=1&votes=x", map[string]any{"nope": 1, "votes": "x"}, map[string]any{"nope": []any{"Unknown filter."}, "votes": []any{"Enter a number."}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := srv.doREST(t, "GET", "/questions?"+tt.rest, "")
			assert.Equal(t, http.StatusBadRequest, status)
			assert.Equal(t, tt.want, body, "REST")
			got := ws.in(t).request("questions", map[string]any{"action": "list", "data": tt.data, "request_id": "e"})
			assert.Equal(t, map[string]any{"action": "list", "data": nil, "errors": []any{tt.want}, "response_status": 400.0, "request_id": "e"}, got, "WebSocket")
		})
	}
	t.Run("a value that is an object", func(t *testing.T) {
		got := ws.in(t).request("questions", map[string]any{"action": "list", "data": map[string]any{"votes": map[string]any{"gte": 1}}, "request_id": "o"})
		assert.EqualValues(t, 400, got["response_status"])
		assert.Equal(t, []any{map[string]any{"votes": []any{"Enter a valid value."}}}, got["errors"])
	})
	t.Run("a stream without search", func(t *testing.T) {
		srv := testModelServer(t)
		status, body := srv.doREST(t, "GET", "/testmodel?search=x", "")
		assert.Equal(t, http.StatusBadRequest, status)
		assert.Equal(t, map[string]any{"search": []any{"Unknown filter."}}, body)
		status, body = srv.doREST(t, "GET", "/testmodel?name=x", "")
		assert.Equal(t, http.StatusBadRequest, status, "a stream without filters refuses filters rather than ignoring them")
		assert.Equal(t, map[string]any{"name": []any{"Unknown filter."}}, body)
		status, _ = srv.doREST(t, "GET", "/testmodel?page=1&page_size=5", "")
		assert.Equal(t, http.StatusOK, status, "pagination keys are no filters")
	})
}

// TestListQueryInjection sends hostile keys and values: each is refused
// or matches as a literal value, never a server error, never SQL.
func TestListQueryInjection(t *testing.T) {
	srv, rows := newQuestionsServer(t)
	ws := srv.dial(t, nil)
	hostile := []string{
		"' OR '1'='1", "1; DROP TABLE poll_questions;--", `" OR ""="`, "1) OR (1=1", "%' OR 1=1 --", `\`, `\%`, "%%", "_",
		"' UNION SELECT secret FROM poll_questions --", "1 OR 1=1", "$1", "?", "(SELECT 1)", "x' COLLATE nocase --",
	}
	keys := []string{"question_text", "question_text__icontains", "question_text__istartswith", "question_text__contains", "votes", "pub_date__gte", "done", "question_text__in"}
	for _, v := range hostile {
		for _, k := range keys {
			status, body, _ := srv.restRaw(t, "GET", "/questions?"+url.Values{k: {v}}.Encode(), nil)
			assert.Contains(t, []int{200, 400}, status, "%s=%q: %s", k, v, body)
			assertNoSQL(t, body)
			if status == 200 {
				assert.NotContains(t, string(body), "secret-", "no hidden value leaks")
			}
			got := ws.request("questions", map[string]any{"action": "list", "data": map[string]any{k: v}, "request_id": 1})
			assert.Contains(t, []any{200.0, 400.0}, got["response_status"], "%s=%q: %v", k, v, got)
		}
		for _, k := range []string{v, v + "__exact", "question_text__" + v, "ordering"} {
			status, body, _ := srv.restRaw(t, "GET", "/questions?"+url.Values{k: {"1"}}.Encode(), nil)
			if k == "ordering" {
				status, body, _ = srv.restRaw(t, "GET", "/questions?"+url.Values{k: {v}}.Encode(), nil)
			}
			assert.Equal(t, http.StatusBadRequest, status, "key %q: %s", k, body)
			assertNoSQL(t, body)
		}
	}
	// The table is intact and every row is still there.
	assert.Len(t, restIDs(t, srv, "/questions"), len(rows))
}

// TestRequestQueryAndParams checks that Scope, permissions and custom
// actions see the query and path parameters, on both transports.
func TestRequestQueryAndParams(t *testing.T) {
	type seen struct {
		transport channelsapi.Transport
		query     url.Values
		params    map[string]string
	}
	got := make(chan seen, 10)
	srv, rows := newQuestionsServer(t, func(vs *channelsapi.ViewSet[pollQuestion]) {
		vs.Scope = func(_ context.Context, r *channelsapi.Request, db *gorm.DB) (*gorm.DB, error) {
			if r.Action == "list" {
				got <- seen{r.Transport, r.Query, r.Params}
			}
			if r.Query.Get("owner") == "nobody" {
				return nil, channelsapi.ErrPermissionDenied
			}
			return db, nil
		}
		vs.Actions = map[string]channelsapi.Action[pollQuestion]{
			"echo": {Detail: true, Handle: func(_ context.Context, r *channelsapi.Request, q *pollQuestion) (any, int, error) {
				return map[string]any{"q": r.Query.Get("x"), "pk": r.Params["pk"], "id": q.ID}, 0, nil
			}},
		}
	})
	restIDs(t, srv, "/questions?votes__in=1&votes__in=2&owner=alice")
	s := <-got
	assert.Equal(t, channelsapi.TransportREST, s.transport)
	assert.Equal(t, url.Values{"votes__in": {"1", "2"}, "owner": {"alice"}}, s.query)

	ws := srv.dial(t, nil)
	socketIDs(t, ws, map[string]any{"votes__in": []any{1, 2}, "owner": "alice", "page": 1})
	s = <-got
	assert.Equal(t, channelsapi.TransportWebSocket, s.transport)
	assert.Equal(t, url.Values{"votes__in": {"1", "2"}, "owner": {"alice"}}, s.query)

	status, body := srv.doREST(t, "GET", "/questions?owner=nobody", "")
	assert.Equal(t, http.StatusUnauthorized, status, "the Scope's error answers: %v", body)
	<-got

	id := rows[0].ID
	status, body = srv.doREST(t, "GET", fmt.Sprintf("/questions/%d/echo?x=y", id), "")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, map[string]any{"q": "y", "pk": fmt.Sprint(id), "id": float64(id)}, body)
	reply := ws.request("questions", map[string]any{"action": "echo", "pk": id, "request_id": 2})
	assert.Equal(t, map[string]any{"q": "", "pk": fmt.Sprint(id), "id": float64(id)}, reply["data"])
}

// TestScopeFilterNarrows checks the ScopeFilter on every action, and that
// a client's query narrows it, never widens it.
func TestScopeFilterNarrows(t *testing.T) {
	srv, rows := newQuestionsServer(t, func(vs *channelsapi.ViewSet[pollQuestion]) {
		vs.ScopeFilter = func(_ context.Context, r *channelsapi.Request) (channelsapi.Filter, error) {
			u := r.Header.Get("X-User")
			if u == "" {
				return nil, channelsapi.ErrNotAuthenticated
			}
			return channelsapi.Filter{"owner": u, "secret__startswith": "secret-"}, nil
		}
	})
	mine := func(q pollQuestion) bool { return q.Owner == "alice" }
	path := "/questions"
	status, body := srv.doREST(t, "GET", path, "", "X-User", "alice")
	require.Equal(t, http.StatusOK, status)
	assert.Equal(t, wantIDs(rows, mine, nil), idsOf(t, body.(map[string]any)["results"]))

	status, body = srv.doREST(t, "GET", path+"?owner=bob", "", "X-User", "alice")
	require.Equal(t, http.StatusOK, status)
	assert.Empty(t, idsOf(t, body.(map[string]any)["results"]), "the query narrows the scope")

	status, _ = srv.doREST(t, "GET", path, "")
	assert.Equal(t, http.StatusUnauthorized, status, "the ScopeFilter's error answers")

	var bobs pollQuestion
	for _, q := range rows {
		if q.Owner == "bob" {
			bobs = q
			break
		}
	}
	for _, method := range []string{"GET", "PATCH", "DELETE"} {
		status, _ = srv.doREST(t, method, fmt.Sprintf("/questions/%d", bobs.ID), `{"votes":1}`, "X-User", "alice")
		assert.Equal(t, http.StatusNotFound, status, "%s of another's row", method)
	}
	status, _ = srv.doREST(t, "GET", fmt.Sprintf("/questions/%d", bobs.ID), "", "X-User", "bob")
	assert.Equal(t, http.StatusOK, status)
}

// TestFilterDeclarationErrors checks that Add refuses what cannot be
// queried.
func TestFilterDeclarationErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*channelsapi.ViewSet[pollQuestion])
		want   string
	}{
		{"unknown field", func(vs *channelsapi.ViewSet[pollQuestion]) { vs.Filters = map[string][]string{"nope": {"exact"}} }, `"nope" is not a JSON field`},
		{"hidden field", func(vs *channelsapi.ViewSet[pollQuestion]) { vs.Filters = map[string][]string{"Secret": {"exact"}} }, `"Secret" is not a JSON field`},
		{"lookup for another type", func(vs *channelsapi.ViewSet[pollQuestion]) { vs.Filters = map[string][]string{"votes": {"icontains"}} }, `lookup "icontains"`},
		{"unknown lookup", func(vs *channelsapi.ViewSet[pollQuestion]) { vs.Filters = map[string][]string{"votes": {"regex"}} }, `lookup "regex"`},
		{"no lookups", func(vs *channelsapi.ViewSet[pollQuestion]) { vs.Filters = map[string][]string{"votes": {}} }, "has no lookups"},
		{"ordering on a hidden field", func(vs *channelsapi.ViewSet[pollQuestion]) { vs.OrderingFields = []string{"secret"} }, `"secret" is not a JSON field`},
		{"search on a number", func(vs *channelsapi.ViewSet[pollQuestion]) { vs.SearchFields = []string{"votes"} }, `search field "votes" is not a string`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			router := gin.New()
			api, err := channelsapi.Register(router, openDB(t, &pollQuestion{}))
			require.NoError(t, err)
			t.Cleanup(func() { _ = api.Shutdown(context.Background()) })
			vs := pollQuestions()
			tt.mutate(&vs)
			err = channelsapi.Add(api, vs)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// apiKey has a hidden column "token" and a visible field whose JSON key is
// "token" too (a masked value shown under the hidden column's name).
type apiKey struct {
	ID        uint   `json:"id" gorm:"primaryKey"`
	Token     string `json:"-"`
	TokenHint string `json:"token"`
}

// TestHiddenColumnNamedLikeAJSONKey checks that a hidden column is never
// reached by a client's filter or ordering through a visible field's name.
func TestHiddenColumnNamedLikeAJSONKey(t *testing.T) {
	srv := newServerOn(t, openDB(t, &apiKey{}), func(api *channelsapi.API, _ *gorm.DB) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[apiKey]{
			Stream:         "keys",
			Filters:        map[string][]string{"token": {"exact", "startswith"}},
			OrderingFields: []string{"token"},
		}))
	})
	require.NoError(t, srv.DB.Create(&apiKey{Token: "s3cr3t-a", TokenHint: "****"}).Error)
	require.NoError(t, srv.DB.Create(&apiKey{Token: "s3cr3t-b", TokenHint: "***"}).Error)
	assert.Equal(t, []float64{1}, restIDs(t, srv, "/keys?token=****"), "the visible field's value")
	assert.Empty(t, restIDs(t, srv, "/keys?token__startswith=s3c"), "no oracle on the hidden column")
	assert.Equal(t, []float64{2, 1}, restIDs(t, srv, "/keys?ordering=token"), "ordered by the visible field")
}
