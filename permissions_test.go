package channelsapi_test

// This file tests permissions.go: the built-in permissions and their
// combinations, and the authorization matrix, every action of every user on
// both users' notes over both transports.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// matrixResult is the outcome of one request of the authorization matrix,
// whichever transport it came on.
type matrixResult struct {
	status int
	data   any     // the object, or the page's objects for list
	count  float64 // list: the total count
	raw    string
}

// isObjectAction reports whether the action acts on one object.
func isObjectAction(action string) bool {
	return action != "create" && action != "list"
}

// wantMatrixStatus is the specification of the matrix: anonymous is 401
// everywhere; a user acting on another user's note is 404 (the note is not
// in their scope), an admin may do anything, and the status of success is
// the action's.
func wantMatrixStatus(u *authUser, action string, owner *authUser, transport string) int {
	switch {
	case u == nil:
		return http.StatusUnauthorized
	case owner != nil && !u.Admin && u != owner:
		return http.StatusNotFound
	}
	switch action {
	case "create", "subscribe_instance":
		return http.StatusCreated
	case "delete":
		if transport == "rest" {
			return http.StatusNoContent
		}
	}
	return http.StatusOK
}

// runMatrixAction runs action as u on note pk (0: none) and normalizes the
// answer of either transport.
func runMatrixAction(tb testing.TB, srv *testServer, ws *wsClient, transport string, u *authUser, action string, pk uint, rid string) matrixResult {
	tb.Helper()
	text := "written by " + userName(u)
	if transport == "websocket" {
		p := map[string]any{"action": action, "request_id": rid}
		if pk != 0 {
			p["pk"] = pk
		}
		switch action {
		case "create", "update", "patch":
			p["data"] = map[string]any{"text": text}
		case "list":
			p["data"] = map[string]any{"page_size": 100}
		}
		got := ws.request("notes", p)
		res := matrixResult{status: int(got["response_status"].(float64)), data: got["data"], raw: fmt.Sprint(got)}
		if meta, ok := got["meta"].(map[string]any); ok {
			res.count, _ = meta["count"].(float64)
		}
		if got["request_id"] != rid {
			res.status = -1 // not the reply to this request
		}
		return res
	}
	path := "/notes"
	if pk != 0 {
		path = fmt.Sprintf("/notes/%d", pk)
	}
	method, body := http.MethodGet, ""
	switch action {
	case "create":
		method, body = http.MethodPost, string(jsonBytes(tb, map[string]any{"text": text}))
	case "update":
		method, body = http.MethodPut, string(jsonBytes(tb, map[string]any{"text": text}))
	case "patch":
		method, body = http.MethodPatch, string(jsonBytes(tb, map[string]any{"text": text}))
	case "delete":
		method = http.MethodDelete
	case "list":
		path += "?page_size=100"
	case "summary":
		path += "/summary"
	}
	status, b := srv.restAs(tb, u, method, path, body)
	res := matrixResult{status: status, data: parseJSON(b), raw: string(b)}
	if page, ok := res.data.(map[string]any); ok && action == "list" && status == http.StatusOK {
		res.data, res.count = page["results"], page["count"].(float64)
	}
	return res
}

// TestAuthorizationMatrix runs every action as every user on both users'
// notes over both transports and compares the status with
// wantMatrixStatus, the effect of allowed requests with what they may see
// and do, and the table after refused requests with the table before.
func TestAuthorizationMatrix(t *testing.T) {
	start := time.Now()
	srv := newNotesServer(t)
	db := srv.DB
	users := []*authUser{nil, userA, userB, userAdmin}
	sockets := map[*authUser]*wsClient{}
	for _, u := range users {
		sockets[u] = srv.dialAs(t, u)
	}
	actions := []string{"retrieve", "list", "update", "patch", "delete", "create", "summary", "subscribe_instance"}

	var cases, mismatches int
	for _, transport := range []string{"websocket", "rest"} {
		for _, u := range users {
			for _, action := range actions {
				owners := []*authUser{nil}
				if isObjectAction(action) {
					owners = []*authUser{userA, userB}
				}
				if transport == "rest" && strings.Contains(action, "subscribe") {
					continue // no REST route
				}
				for _, owner := range owners {
					cases++
					desc := fmt.Sprintf("%s %s as %s", transport, action, userName(u))
					var pk uint
					if owner != nil {
						desc += " on the note of " + owner.Name
						n := authNote{OwnerID: owner.ID, Text: "note of " + owner.Name}
						require.NoError(t, db.Create(&n).Error)
						pk = n.ID
					}
					before := dumpRows[authNote](t, db)
					res := runMatrixAction(t, srv, sockets[u], transport, u, action, pk, fmt.Sprint("m", cases))
					problems := checkMatrixResult(t, db, res, u, action, owner, pk, transport, before)
					for _, p := range problems {
						t.Errorf("%s: %s", desc, p)
					}
					if len(problems) > 0 {
						mismatches++
					}
				}
			}
		}
	}
	t.Logf("authorization matrix: %d cases, %d mismatches, %v", cases, mismatches, time.Since(start).Round(time.Millisecond))
	assert.Zero(t, mismatches)
	assert.Less(t, time.Since(start), 5*time.Second)
}

// checkMatrixResult returns what is wrong with res, the answer to action as
// u on the note pk of owner (none when pk is 0).
func checkMatrixResult(tb testing.TB, db *gorm.DB, res matrixResult, u *authUser, action string, owner *authUser, pk uint, transport, before string) []string {
	tb.Helper()
	want := wantMatrixStatus(u, action, owner, transport)
	if res.status != want {
		return []string{fmt.Sprintf("status %d, want %d (reply %s)", res.status, want, res.raw)}
	}
	if res.status >= 400 {
		if after := dumpRows[authNote](tb, db); after != before {
			return []string{fmt.Sprintf("refused request changed the table:\nbefore %s\nafter  %s", before, after)}
		}
		return nil
	}
	var problems []string
	obj, _ := res.data.(map[string]any)
	var row authNote
	found := db.Limit(1).Find(&row, pk).RowsAffected == 1
	switch action {
	case "retrieve", "update", "patch":
		if obj["id"] != float64(pk) || obj["owner_id"] != float64(owner.ID) {
			problems = append(problems, fmt.Sprintf("object %v, want note %d of user %d", obj, pk, owner.ID))
		}
		if action != "retrieve" && (!found || row.Text != "written by "+userName(u) || row.OwnerID != owner.ID) {
			problems = append(problems, fmt.Sprintf("row after the write: %+v", row))
		}
	case "summary":
		if obj["id"] != float64(pk) {
			problems = append(problems, fmt.Sprintf("summary %v of note %d", obj, pk))
		}
	case "delete":
		if found {
			problems = append(problems, "the note was not deleted")
		}
	case "create":
		var n authNote
		if obj["owner_id"] != float64(u.ID) || db.Limit(1).Find(&n, obj["id"]).RowsAffected != 1 || n.OwnerID != u.ID {
			problems = append(problems, fmt.Sprintf("created %v (row %+v), want a note of user %d", obj, n, u.ID))
		}
	case "list":
		q := db.Model(&authNote{})
		if !u.Admin {
			q = q.Where("owner_id = ?", u.ID)
		}
		var n int64
		require.NoError(tb, q.Count(&n).Error)
		if res.count != float64(n) {
			problems = append(problems, fmt.Sprintf("list count %v, want %d", res.count, n))
		}
		items, _ := res.data.([]any)
		for _, it := range items {
			if m, _ := it.(map[string]any); !u.Admin && m["owner_id"] != float64(u.ID) {
				problems = append(problems, fmt.Sprintf("list of %s shows %v", u.Name, m))
			}
		}
		if len(items) == 0 {
			problems = append(problems, "empty list page")
		}
	}
	return problems
}

// readOnly allows the requests that only read.
func readOnly() channelsapi.Permission {
	return func(_ context.Context, r *channelsapi.Request) error {
		if r.ReadOnly() {
			return nil
		}
		return channelsapi.ErrPermissionDenied
	}
}

func TestBuiltinPermissions(t *testing.T) {
	const ok = 0 // allowed: the status of the action's success
	type want struct{ read, write int }
	tests := []struct {
		name             string
		give             channelsapi.Permission
		anon, alice, bob want
	}{
		{"AllowAny", channelsapi.AllowAny(), want{ok, ok}, want{ok, ok}, want{ok, ok}},
		{"IsAuthenticated", channelsapi.IsAuthenticated(), want{401, 401}, want{ok, ok}, want{ok, ok}},
		{"IsAuthenticatedOrReadOnly", channelsapi.IsAuthenticatedOrReadOnly(), want{ok, 401}, want{ok, ok}, want{ok, ok}},
		{"And of nothing", channelsapi.And(), want{ok, ok}, want{ok, ok}, want{ok, ok}},
		{"And", channelsapi.And(channelsapi.IsAuthenticated(), onlyUser(userA)), want{401, 401}, want{ok, ok}, want{403, 403}},
		{"And answers the first refusal", channelsapi.And(onlyUser(userA), channelsapi.IsAuthenticated()), want{401, 401}, want{ok, ok}, want{403, 403}},
		{"And with a read-only part", channelsapi.And(channelsapi.IsAuthenticated(), readOnly()), want{401, 401}, want{ok, 403}, want{ok, 403}},
		{"Or of nothing", channelsapi.Or(), want{401, 401}, want{403, 403}, want{403, 403}},
		{"Or", channelsapi.Or(onlyUser(userA), readOnly()), want{ok, 401}, want{ok, ok}, want{ok, 403}},
		{"Or answers the last refusal", channelsapi.Or(readOnly(), channelsapi.IsAuthenticated()), want{ok, 401}, want{ok, ok}, want{ok, ok}},
		{"Not", channelsapi.Not(channelsapi.IsAuthenticated()), want{ok, ok}, want{403, 403}, want{403, 403}},
		{"Not of AllowAny", channelsapi.Not(channelsapi.AllowAny()), want{401, 401}, want{403, 403}, want{403, 403}},
		{"Not in And", channelsapi.And(channelsapi.IsAuthenticated(), channelsapi.Not(onlyUser(userB))), want{401, 401}, want{ok, ok}, want{403, 403}},
	}
	db := openDB(t, &TestModel{})
	seed(t, db, "row", "watched")
	srv := newAuthServer(t, db, func(api *channelsapi.API) {
		for i, tt := range tests {
			require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: fmt.Sprint("perm", i), Permission: tt.give}))
		}
	}, quietLog())
	sockets := map[*authUser]*wsClient{}
	for _, u := range []*authUser{nil, userA, userB} {
		sockets[u] = srv.dialAs(t, u)
	}
	type action struct {
		name      string
		write     bool
		success   int
		ws        map[string]any
		method    string
		path      string // after /<stream>
		body      string
		websocket bool // WebSocket only
	}
	actions := []action{
		{name: "retrieve", success: 200, ws: map[string]any{"action": "retrieve", "pk": 1}, method: http.MethodGet, path: "/1"},
		{name: "list", success: 200, ws: map[string]any{"action": "list"}, method: http.MethodGet},
		// No delete happens and row 2 is never written: subscriptions
		// receive nothing that could come between a request and its reply.
		{name: "subscribe", success: 200, ws: map[string]any{"action": "subscribe", "data": map[string]any{"action": "delete"}}, websocket: true},
		{name: "subscribe_instance", success: 201, ws: map[string]any{"action": "subscribe_instance", "pk": 2}, websocket: true},
		{name: "create", write: true, success: 201, ws: map[string]any{"action": "create", "data": map[string]any{"name": "new"}},
			method: http.MethodPost, body: `{"name":"new"}`},
		{name: "patch", write: true, success: 200, ws: map[string]any{"action": "patch", "pk": 1, "data": map[string]any{"name": "row"}},
			method: http.MethodPatch, path: "/1", body: `{"name":"row"}`},
	}
	var cases, mismatches int
	for i, tt := range tests {
		stream := fmt.Sprint("perm", i)
		for _, u := range []*authUser{nil, userA, userB} {
			w := map[*authUser]want{nil: tt.anon, userA: tt.alice, userB: tt.bob}[u]
			for _, a := range actions {
				expect := w.read
				if a.write {
					expect = w.write
				}
				for _, transport := range []string{"websocket", "rest"} {
					if transport == "rest" && a.websocket {
						continue
					}
					wantStatus := expect
					if expect == ok {
						wantStatus = a.success
						if transport == "rest" && a.name == "create" {
							wantStatus = http.StatusCreated
						}
					}
					cases++
					var status int
					var reply any
					if transport == "websocket" {
						p := map[string]any{"request_id": cases}
						for k, v := range a.ws {
							p[k] = v
						}
						got := sockets[u].request(stream, p)
						status, reply = int(got["response_status"].(float64)), got
						if status == 401 || status == 403 {
							assert.Equal(t, []any{"Permission Denied"}, got["errors"])
						}
					} else {
						var b []byte
						status, b = srv.restAs(t, u, a.method, "/"+stream+a.path, a.body)
						reply = string(b)
						if status == 401 || status == 403 {
							assert.JSONEq(t, `{"detail":"Permission Denied"}`, string(b))
						}
					}
					if status != wantStatus {
						mismatches++
						t.Errorf("%s: %s %s as %s: status %d, want %d (%v)", tt.name, transport, a.name, userName(u), status, wantStatus, reply)
					}
				}
			}
		}
	}
	t.Logf("built-in permissions: %d permissions, %d cases, %d mismatches", len(tests), cases, mismatches)
	assert.Zero(t, mismatches)
}
