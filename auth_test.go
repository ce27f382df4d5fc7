package channelsapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// This file tests issue 5's authorization: the same permissions on both
// transports, for every event and every recipient, the connect check, the
// built-in permissions, hooks and constraint violations.

// authUser is an account of these tests, shaped like example/auth.go's User.
type authUser struct {
	ID    uint
	Name  string
	Admin bool
}

var (
	userA     = &authUser{ID: 1, Name: "alice"}
	userB     = &authUser{ID: 2, Name: "bob"}
	userAdmin = &authUser{ID: 3, Name: "admin", Admin: true}
)

// authUserNamed resolves the X-User header and the subprotocol token of the
// tests; nil means no such user.
func authUserNamed(name string) *authUser {
	switch name {
	case userA.Name, "token-" + userA.Name:
		return userA
	case userB.Name, "token-" + userB.Name:
		return userB
	case userAdmin.Name, "token-" + userAdmin.Name:
		return userAdmin
	}
	return nil
}

func userName(u *authUser) string {
	if u == nil {
		return "anonymous"
	}
	return u.Name
}

// authenticate is the application's middleware of these tests, like
// example/auth.go's: it stores the user named by "X-User", or by the
// WebSocket subprotocol offer "bearer, token-<name>", as the context's
// "user" (which channelsapi reads by default). It stores nothing for an
// anonymous request, so the user is an untyped nil.
func authenticate(c *gin.Context) {
	name := c.GetHeader("X-User")
	if protos := strings.Split(c.GetHeader("Sec-WebSocket-Protocol"), ","); len(protos) == 2 &&
		strings.TrimSpace(protos[0]) == "bearer" {
		name = strings.TrimSpace(protos[1])
	}
	if u := authUserNamed(name); u != nil {
		c.Set("user", u)
	}
	c.Next()
}

// newAuthServer is newServer on db, with the authenticate middleware.
func newAuthServer(tb testing.TB, db *gorm.DB, setup func(api *channelsapi.API), opts ...channelsapi.Option) *testServer {
	tb.Helper()
	router := gin.New()
	router.Use(authenticate)
	return serveAPI(tb, router, db, func(api *channelsapi.API, _ *gorm.DB) {
		if setup != nil {
			setup(api)
		}
	}, opts...)
}

// in returns c for use in the (sub)test tb, so that its failures are tb's.
func (c *wsClient) in(tb testing.TB) *wsClient { return &wsClient{tb: tb, conn: c.conn} }

// dialAs opens a WebSocket as u (nil: anonymous).
func (s *testServer) dialAs(tb testing.TB, u *authUser) *wsClient {
	tb.Helper()
	header := http.Header{}
	if u != nil {
		header.Set("X-User", u.Name)
	}
	return s.dial(tb, header)
}

// restAs sends a REST request as u (nil: anonymous) and returns the status
// and the raw body.
func (s *testServer) restAs(tb testing.TB, u *authUser, method, path, body string) (int, []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, strings.NewReader(body))
	require.NoError(tb, err)
	req.Header.Set("Content-Type", "application/json")
	if u != nil {
		req.Header.Set("X-User", u.Name)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(tb, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	return resp.StatusCode, b
}

// dumpRows returns every row of T's table (soft-deleted ones too), in key
// order, as JSON: two dumps are equal when the table did not change.
func dumpRows[T any](tb testing.TB, db *gorm.DB) string {
	tb.Helper()
	var rows []T
	require.NoError(tb, db.Unscoped().Order("id").Find(&rows).Error)
	return string(jsonBytes(tb, rows))
}

// parseJSON parses b; a body that is not JSON is returned as its text.
func parseJSON(b []byte) any {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	return v
}

// authNote is example/auth.go's Note: a private note of its owner.
type authNote struct {
	ID      uint   `json:"id" gorm:"primaryKey"`
	OwnerID uint   `json:"owner_id" gorm:"index"`
	Text    string `json:"text" binding:"required,max=1000"`
}

func noteUser(r *channelsapi.Request) *authUser {
	u, _ := r.User.(*authUser)
	return u
}

// notesViewSet is example/auth.go's notes ViewSet, with a custom detail
// action "summary".
func notesViewSet() channelsapi.ViewSet[authNote] {
	return channelsapi.ViewSet[authNote]{
		Stream:         "notes",
		Label:          "tests.note",
		ReadOnlyFields: []string{"owner_id"},
		Permission:     channelsapi.IsAuthenticated(),
		Scope: func(r *channelsapi.Request, db *gorm.DB) *gorm.DB {
			if u := noteUser(r); u != nil && !u.Admin {
				return db.Where("owner_id = ?", u.ID)
			}
			return db
		},
		ObjectPermission: func(_ context.Context, r *channelsapi.Request, n *authNote) error {
			if u := noteUser(r); u != nil && (u.Admin || n.OwnerID == u.ID) {
				return nil
			}
			return channelsapi.ErrNotFound
		},
		Hooks: channelsapi.Hooks[authNote]{
			BeforeCreate: func(_ context.Context, _ *gorm.DB, r *channelsapi.Request, n *authNote) error {
				n.OwnerID = noteUser(r).ID
				return nil
			},
		},
		Actions: map[string]channelsapi.Action[authNote]{
			"summary": {Detail: true, Handle: func(_ context.Context, _ *channelsapi.Request, n *authNote) (any, int, error) {
				return map[string]any{"id": n.ID, "words": len(strings.Fields(n.Text))}, 0, nil
			}},
		},
	}
}

func newNotesServer(tb testing.TB, opts ...channelsapi.Option) *testServer {
	tb.Helper()
	db := openDB(tb, &authNote{})
	return newAuthServer(tb, db, func(api *channelsapi.API) {
		require.NoError(tb, channelsapi.Add(api, notesViewSet()))
	}, opts...)
}

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

// noteEvents reads c's frames on "notes" until the create event of the note
// whose text is sentinel, and returns them, sentinel excluded, in the form
// of describeNoteEvent.
func noteEvents(c *wsClient, sentinel string) []string {
	c.tb.Helper()
	var out []string
	for {
		p := c.readPayload("notes")
		if d, _ := p["data"].(map[string]any); p["action"] == "create" && d["text"] == sentinel {
			return out
		}
		out = append(out, describeNoteEvent(p))
	}
}

// describeNoteEvent writes an event payload as one comparable line.
func describeNoteEvent(p map[string]any) string {
	data, _ := json.Marshal(p["data"])
	if rid, ok := p["request_id"]; ok { // DCRF instance event
		return fmt.Sprintf("instance %v: %v %s status %v errors %v", rid, p["action"], data, p["response_status"], p["errors"])
	}
	return fmt.Sprintf("%v pk=%v %s model %v", p["action"], p["pk"], data, p["model"])
}

func groupNoteEvent(action string, n authNote) string {
	return describeNoteEvent(map[string]any{"action": action, "pk": float64(n.ID), "model": "tests.note", "data": plainJSON(n)})
}

func instanceNoteEvent(rid, action string, data any, status int) string {
	return describeNoteEvent(map[string]any{"action": action, "request_id": rid, "data": plainJSON(data),
		"response_status": float64(status), "errors": []any{}})
}

// plainJSON round-trips v, a value of these tests that always encodes,
// through JSON so that it compares with parsed frames.
func plainJSON(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
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

// dialStatus tries an upgrade with header and dialer and returns the
// connection (nil if refused), the HTTP status and the response body.
func dialStatus(tb testing.TB, srv *testServer, dialer *websocket.Dialer, header http.Header) (*wsClient, int, []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	conn, resp, err := dialer.DialContext(ctx, srv.WSURL, header)
	require.NotNil(tb, resp, "dial: %v", err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if err != nil {
		require.ErrorIs(tb, err, websocket.ErrBadHandshake)
		return nil, resp.StatusCode, body
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return &wsClient{tb: tb, conn: conn}, resp.StatusCode, body
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

// onlyUser allows u's requests only.
func onlyUser(u *authUser) channelsapi.Permission {
	return func(_ context.Context, r *channelsapi.Request) error {
		if got, _ := r.User.(*authUser); got == u {
			return nil
		}
		return channelsapi.ErrPermissionDenied
	}
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

func TestDefaultPermission(t *testing.T) {
	db := openDB(t, &TestModel{})
	seed(t, db, "row")
	srv := newAuthServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "defaulted"}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "open", Permission: channelsapi.AllowAny()}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[TestModel]{Stream: "alice", Permission: onlyUser(userA)}))
	}, channelsapi.WithDefaultPermission(channelsapi.IsAuthenticated()))
	anon, alice, bob := srv.dialAs(t, nil), srv.dialAs(t, userA), srv.dialAs(t, userB)

	tests := []struct {
		stream string
		user   *authUser
		ws     *wsClient
		want   int
	}{
		{"defaulted", nil, anon, 401},
		{"defaulted", userA, alice, 200},
		{"defaulted", userB, bob, 200},
		{"open", nil, anon, 200},
		{"alice", nil, anon, 401},
		{"alice", userA, alice, 200},
		{"alice", userB, bob, 403},
	}
	for _, tt := range tests {
		t.Run(tt.stream+"/"+userName(tt.user), func(t *testing.T) {
			got := tt.ws.in(t).request(tt.stream, map[string]any{"action": "retrieve", "pk": 1, "request_id": 1})
			assert.EqualValues(t, tt.want, got["response_status"], "websocket: %v", got)
			status, body := srv.restAs(t, tt.user, http.MethodGet, "/"+tt.stream+"/1", "")
			assert.Equal(t, tt.want, status, "rest: %s", body)
		})
	}
}

// hookNote is written through hooks that change it, refuse it or fail.
type hookNote struct {
	ID    uint   `json:"id" gorm:"primaryKey"`
	Text  string `json:"text" binding:"required,max=100"`
	Stamp string `json:"stamp"`
}

// hookViewSet's Before hooks stamp the object, or refuse it when its text
// is "bad" (400) or "deny" (permission denied); its After hooks fail when
// the text is "after-fail" (a plain error: 500) or "after-error" (409).
func hookViewSet() channelsapi.ViewSet[hookNote] {
	before := func(stamp string) func(context.Context, *gorm.DB, *channelsapi.Request, *hookNote) error {
		return func(_ context.Context, _ *gorm.DB, _ *channelsapi.Request, n *hookNote) error {
			switch n.Text {
			case "bad":
				return channelsapi.NewError(http.StatusBadRequest, "Refused by hook.")
			case "deny":
				return channelsapi.ErrPermissionDenied
			}
			n.Stamp = stamp + n.Text
			return nil
		}
	}
	after := func(_ context.Context, _ *gorm.DB, _ *channelsapi.Request, n *hookNote) error {
		switch n.Text {
		case "after-fail":
			return errors.New("after hook failed: secret detail")
		case "after-error":
			return channelsapi.NewError(http.StatusConflict, "Rejected after write.")
		}
		return nil
	}
	return channelsapi.ViewSet[hookNote]{
		Stream:         "hooked",
		Label:          "tests.hooked",
		ReadOnlyFields: []string{"stamp"},
		Hooks: channelsapi.Hooks[hookNote]{
			BeforeCreate: before("created:"), AfterCreate: after,
			BeforeUpdate: before("updated:"), AfterUpdate: after,
			BeforeDelete: before("deleted:"), AfterDelete: after,
		},
	}
}

func TestHooks(t *testing.T) {
	db := openDB(t, &hookNote{})
	srv := newAuthServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, hookViewSet()))
	}, quietLog())
	listener := srv.dialAs(t, nil)
	for _, e := range []string{"create", "update", "delete"} {
		got := listener.request("hooked", map[string]any{"action": "subscribe", "data": map[string]any{"action": e}})
		require.EqualValues(t, 200, got["response_status"])
	}
	sockets := map[*authUser]*wsClient{nil: srv.dialAs(t, nil), userA: srv.dialAs(t, userA)}

	tests := []struct {
		name    string
		text    string
		user    *authUser
		status  int    // 0: success
		message string // the error's message
	}{
		{name: "before hook changes the object", text: "ok", user: userA},
		{name: "before hook refuses with an Error", text: "bad", user: userA, status: 400, message: "Refused by hook."},
		{name: "before hook denies an authenticated user", text: "deny", user: userA, status: 403, message: "Permission Denied"},
		{name: "before hook denies an anonymous user", text: "deny", status: 401, message: "Permission Denied"},
		{name: "after hook fails", text: "after-fail", user: userA, status: 500, message: "A server error occurred."},
		{name: "after hook returns an Error", text: "after-error", user: userA, status: 409, message: "Rejected after write."},
	}
	var cases, mismatches int
	for _, tt := range tests {
		for _, action := range []string{"create", "update", "patch", "delete"} {
			for _, transport := range []string{"websocket", "rest"} {
				cases++
				t.Run(tt.name+"/"+action+"/"+transport, func(t *testing.T) {
					listener, ws := listener.in(t), sockets[tt.user].in(t)
					defer func() {
						if t.Failed() {
							mismatches++
						}
					}()
					// create: the text is sent; update, patch: sent over "orig";
					// delete: the text of the row deleted.
					row := hookNote{Text: "orig"}
					if action == "delete" {
						row.Text = tt.text
					}
					if action != "create" {
						require.NoError(t, db.Create(&row).Error)
						require.Equal(t, "create", listener.readPayload("hooked")["action"], "the row's own event")
					}
					before := dumpRows[hookNote](t, db)

					var status int
					var obj map[string]any
					var errs any
					if transport == "websocket" {
						p := map[string]any{"action": action, "request_id": cases}
						if action != "create" {
							p["pk"] = row.ID
						}
						if action != "delete" {
							p["data"] = map[string]any{"text": tt.text}
						}
						got := ws.request("hooked", p)
						require.EqualValues(t, cases, got["request_id"])
						status = int(got["response_status"].(float64))
						obj, _ = got["data"].(map[string]any)
						errs = got["errors"]
					} else {
						method, path, body := map[string]string{"create": http.MethodPost, "update": http.MethodPut,
							"patch": http.MethodPatch, "delete": http.MethodDelete}[action], "/hooked", ""
						if action != "create" {
							path = fmt.Sprintf("/hooked/%d", row.ID)
						}
						if action != "delete" {
							body = string(jsonBytes(t, map[string]any{"text": tt.text}))
						}
						var b []byte
						status, b = srv.restAs(t, tt.user, method, path, body)
						v := parseJSON(b)
						obj, _ = v.(map[string]any)
						errs = v
						assertNoSQL(t, b)
						assert.NotContains(t, string(b), "secret")
					}
					after := dumpRows[hookNote](t, db)
					sentinel := hookNote{Text: fmt.Sprint("sentinel ", cases)}
					require.NoError(t, db.Create(&sentinel).Error)
					var events []map[string]any
					for {
						p := listener.readPayload("hooked")
						if d, _ := p["data"].(map[string]any); d["text"] == sentinel.Text {
							break
						}
						events = append(events, p)
					}

					if tt.status != 0 {
						assert.Equal(t, tt.status, status)
						if transport == "websocket" {
							assert.Equal(t, []any{tt.message}, errs)
						} else {
							assert.Equal(t, map[string]any{"detail": tt.message}, errs)
						}
						assert.Equal(t, before, after, "nothing is written")
						assert.Empty(t, events, "nothing is published")
						return
					}
					var want hookNote
					switch action {
					case "create":
						assert.Equal(t, http.StatusCreated, status)
						require.NotNil(t, obj)
						want = hookNote{ID: uint(obj["id"].(float64)), Text: "ok", Stamp: "created:ok"}
					case "update", "patch":
						assert.Equal(t, http.StatusOK, status)
						want = hookNote{ID: row.ID, Text: "ok", Stamp: "updated:ok"}
					case "delete":
						assert.Equal(t, map[string]int{"websocket": 200, "rest": 204}[transport], status)
						want = row // as it was: the stamp of a Before hook of a delete is not written
					}
					var got hookNote
					found := db.Limit(1).Find(&got, want.ID).RowsAffected == 1
					if action == "delete" {
						assert.False(t, found, "the row is deleted")
					} else {
						assert.Equal(t, jsonOf(t, want), jsonOf(t, obj), "the reply carries the hook's change")
						assert.Equal(t, want, got, "the hook's change is written")
					}
					eventAction := map[string]string{"create": "create", "update": "update", "patch": "update", "delete": "delete"}[action]
					assert.Equal(t, []map[string]any{{"action": eventAction, "pk": float64(want.ID), "model": "tests.hooked",
						"data": jsonOf(t, want)}}, events, "the event carries the hook's change")
				})
			}
		}
	}
	t.Logf("hooks: %d cases, %d mismatches", cases, mismatches)
}

// sqlWords are what a constraint violation's reply must not contain.
var sqlWords = []string{"UNIQUE", "constraint", "SQLSTATE", "23505", "duplicate", "violates", "FOREIGN", "NOT NULL",
	"INSERT", "UPDATE ", "DELETE FROM", "sqlite", "idx_", "email_address", "constraint_members", "constraint_teams", "hook_notes"}

// assertNoSQL checks that a reply carries no SQL, table or column name.
func assertNoSQL(tb testing.TB, body []byte) {
	tb.Helper()
	for _, w := range sqlWords {
		assert.NotContains(tb, strings.ToLower(string(body)), strings.ToLower(w))
	}
}

// constraintTeam is referenced by constraintMember.
type constraintTeam struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
}

// constraintMember has the constraints a database enforces: a unique
// column whose JSON name differs from its column name, a NOT NULL column
// without a default written from a pointer, a unique pair, a unique column
// clients may not write, and a foreign key.
type constraintMember struct {
	ID     uint            `json:"id" gorm:"primaryKey"`
	Email  string          `json:"email" gorm:"column:email_address;uniqueIndex"`
	Nick   *string         `json:"nick" gorm:"not null"`
	Code   *string         `json:"code" gorm:"uniqueIndex:idx_member_pair"`
	Region *string         `json:"region" gorm:"uniqueIndex:idx_member_pair"`
	Badge  *string         `json:"badge" gorm:"uniqueIndex"`
	TeamID *uint           `json:"team_id"`
	Team   *constraintTeam `json:"-"`
}

// openFKDB opens a fresh database that enforces foreign keys: openDB's on
// PostgreSQL, and on SQLite a file like openDB's whose connections all
// enable them (openDB's SQLite DSN does not).
func openFKDB(tb testing.TB, models ...any) *gorm.DB {
	tb.Helper()
	if postgresDSN() != "" {
		return openDB(tb, models...)
	}
	db := openSQLite(tb, "&_foreign_keys=1", models...)
	var on int
	require.NoError(tb, db.Raw("PRAGMA foreign_keys").Scan(&on).Error)
	require.Equal(tb, 1, on, "foreign keys enforced")
	return db
}

func TestConstraintViolations(t *testing.T) {
	if postgresDSN() == "" {
		var on int
		require.NoError(t, openDB(t).Raw("PRAGMA foreign_keys").Scan(&on).Error)
		t.Logf("openDB's SQLite database enforces foreign keys: %v; this test opens one that does", on == 1)
	}
	db := openFKDB(t, &constraintTeam{}, &constraintMember{})
	srv := newAuthServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[constraintTeam]{Stream: "teams", Label: "tests.team"}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[constraintMember]{
			Stream: "members", Label: "tests.member", ReadOnlyFields: []string{"badge"},
			Hooks: channelsapi.Hooks[constraintMember]{
				BeforeCreate: func(_ context.Context, _ *gorm.DB, _ *channelsapi.Request, m *constraintMember) error {
					if m.Nick != nil && *m.Nick == "vip" {
						badge := "gold"
						m.Badge = &badge
					}
					return nil
				},
			},
		}))
	}, quietLog())
	team := constraintTeam{Name: "team"}
	require.NoError(t, db.Create(&team).Error)
	str := func(s string) *string { return &s }
	first := constraintMember{Email: "taken@example.com", Nick: str("vip"), Code: str("c"), Region: str("r"), Badge: str("gold"), TeamID: &team.ID}
	second := constraintMember{Email: "second@example.com", Nick: str("n")}
	require.NoError(t, db.Create(&first).Error)
	require.NoError(t, db.Create(&second).Error)
	ws := srv.dialAs(t, nil)

	const (
		exists   = "A tests.member with this email already exists."
		conflict = "The object conflicts with an existing one."
		invalid  = "Invalid data."
		related  = "A related object does not exist or is still referenced."
	)
	tests := []struct {
		name      string
		stream    string
		action    string
		pk        uint
		give      map[string]any
		status    int
		wantField string // the field of a field error, else the message is not per field
		message   string
	}{
		{"unique field on create", "members", "create", 0, map[string]any{"email": "taken@example.com", "nick": "x"}, 400, "email", exists},
		{"unique field on patch", "members", "patch", second.ID, map[string]any{"email": "taken@example.com"}, 400, "email", exists},
		{"unique field on update", "members", "update", second.ID, map[string]any{"email": "taken@example.com", "nick": "x"}, 400, "email", exists},
		{"unique pair", "members", "create", 0, map[string]any{"email": "new@example.com", "nick": "x", "code": "c", "region": "r"}, 409, "", conflict},
		{"unique field clients do not write", "members", "create", 0, map[string]any{"email": "new@example.com", "nick": "vip"}, 409, "", conflict},
		{"NOT NULL written as null", "members", "create", 0, map[string]any{"email": "new@example.com", "nick": nil}, 400, "", invalid},
		{"NOT NULL left out", "members", "create", 0, map[string]any{"email": "new@example.com"}, 400, "", invalid},
		{"NOT NULL patched to null", "members", "patch", second.ID, map[string]any{"nick": nil}, 400, "", invalid},
		{"foreign key to nothing on create", "members", "create", 0, map[string]any{"email": "new@example.com", "nick": "x", "team_id": 999}, 400, "", related},
		{"foreign key to nothing on patch", "members", "patch", second.ID, map[string]any{"team_id": 999}, 400, "", related},
		{"delete of a referenced row", "teams", "delete", team.ID, nil, 400, "", related},
	}
	var cases int
	for _, tt := range tests {
		for _, transport := range []string{"websocket", "rest"} {
			cases++
			t.Run(tt.name+"/"+transport, func(t *testing.T) {
				ws := ws.in(t)
				before := dumpRows[constraintMember](t, db) + dumpRows[constraintTeam](t, db)
				var status int
				var body []byte
				var got any
				if transport == "websocket" {
					p := map[string]any{"action": tt.action, "request_id": 1}
					if tt.pk != 0 {
						p["pk"] = tt.pk
					}
					if tt.give != nil {
						p["data"] = tt.give
					}
					ws.send(tt.stream, p)
					body = ws.readRaw()
					payload := parseJSON(body).(map[string]any)["payload"].(map[string]any)
					status, got = int(payload["response_status"].(float64)), payload["errors"]
				} else {
					method, path := map[string]string{"create": http.MethodPost, "update": http.MethodPut,
						"patch": http.MethodPatch, "delete": http.MethodDelete}[tt.action], "/"+tt.stream
					if tt.pk != 0 {
						path += fmt.Sprintf("/%d", tt.pk)
					}
					data := ""
					if tt.give != nil {
						data = string(jsonBytes(t, tt.give))
					}
					status, body = srv.restAs(t, nil, method, path, data)
					got = parseJSON(body)
				}
				assert.Equal(t, tt.status, status, "%s", body)
				var want any
				switch {
				case tt.wantField != "" && transport == "websocket":
					want = []any{map[string]any{tt.wantField: []any{tt.message}}}
				case tt.wantField != "":
					want = map[string]any{tt.wantField: []any{tt.message}}
				case transport == "websocket":
					want = []any{tt.message}
				default:
					want = map[string]any{"detail": tt.message}
				}
				assert.Equal(t, want, got)
				assertNoSQL(t, body)
				assert.Equal(t, before, dumpRows[constraintMember](t, db)+dumpRows[constraintTeam](t, db), "nothing is written")
			})
		}
	}
	t.Logf("constraint violations: %d cases on %s, foreign keys enforced", cases, db.Dialector.Name())
	ws.assertAliveOn("members")
}

// assertAliveOn checks that the connection still answers a list on stream.
func (c *wsClient) assertAliveOn(stream string) {
	c.tb.Helper()
	got := c.request(stream, map[string]any{"action": "list", "request_id": "alive"})
	assert.EqualValues(c.tb, http.StatusOK, got["response_status"], "reply %v", got)
	assert.Equal(c.tb, "alive", got["request_id"])
}

// TestTypedNilUserIsAnonymous resolves the user as a *authUser, which is a
// nil pointer for an anonymous request (a common shape: `u, _ :=
// c.Get("user"); return u.(*User)`-like code): such a request is
// anonymous, or a Scope written for "no user" would show it every row.
func TestTypedNilUserIsAnonymous(t *testing.T) {
	db := openDB(t, &authNote{})
	require.NoError(t, db.Create(&authNote{OwnerID: userA.ID, Text: "private"}).Error)
	var (
		mu         sync.Mutex
		connectNil []bool
	)
	srv := newAuthServer(t, db, func(api *channelsapi.API) {
		require.NoError(t, channelsapi.Add(api, notesViewSet()))
	},
		channelsapi.WithUser(func(c *gin.Context) any {
			u, _ := c.Get("user")
			au, _ := u.(*authUser)
			return au
		}),
		channelsapi.WithConnect(func(_ *gin.Context, user any) error {
			mu.Lock()
			defer mu.Unlock()
			connectNil = append(connectNil, user == nil)
			return nil
		}))

	ws := srv.dialAs(t, nil)
	got := ws.request("notes", map[string]any{"action": "list", "request_id": 1})
	assert.EqualValues(t, 401, got["response_status"], "websocket: %v", got)
	status, body := srv.restAs(t, nil, http.MethodGet, "/notes", "")
	assert.Equal(t, http.StatusUnauthorized, status, "rest: %s", body)
	alice := srv.dialAs(t, userA)
	got = alice.request("notes", map[string]any{"action": "list", "request_id": 1})
	assert.EqualValues(t, 200, got["response_status"], "alice: %v", got)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []bool{true, false}, connectNil, "the connect check sees no user for the anonymous upgrade")
}

// TestDisconnectWithdrawsAuthorization closes the connections of one user
// with 1008 and leaves the others open.
func TestDisconnectWithdrawsAuthorization(t *testing.T) {
	srv := testModelServer(t)
	alice1 := srv.dial(t, http.Header{"X-User": {"alice"}})
	alice2 := srv.dial(t, http.Header{"X-User": {"alice"}})
	bob := srv.dial(t, http.Header{"X-User": {"bob"}})
	anonymous := srv.dial(t, nil)
	for _, c := range []*wsClient{alice1, alice2, bob, anonymous} {
		c.subscribe("create", nil) // the connection is registered and serving
	}

	n := srv.API.Disconnect(func(user any) bool { return user == "alice" })
	assert.Equal(t, 2, n)
	assert.Equal(t, 1008, alice1.closeCode())
	assert.Equal(t, 1008, alice2.closeCode())
	for _, c := range []*wsClient{bob, anonymous} {
		got := c.request("testmodel", map[string]any{"action": "list", "request_id": 1})
		assert.EqualValues(t, 200, got["response_status"], "others stay connected")
	}
	require.Eventually(t, func() bool { return srv.API.Stats().Connections == 2 }, readTimeout, time.Millisecond)
}
