package channelsapi_test

// The debugger page (WithDebugPage): plain HTTP tests of its routes and
// schema, and browser tests that drive it in a real headless Chromium.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/gin-gonic/gin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

const (
	chromiumPath = "/usr/bin/chromium"
	// browserTestTimeout bounds a browser test, browser start included.
	browserTestTimeout = 60 * time.Second
)

func TestDebugPageNotMountedWithoutOption(t *testing.T) {
	tests := []struct {
		name string
		mode string
	}{
		{name: "test mode", mode: gin.TestMode},
		{name: "gin debug mode", mode: gin.DebugMode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setGinMode(t, tt.mode)
			srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
			for _, path := range []string{"/channels-api", "/channels-api/", "/channels-api/schema.json", "/channels-api/app.js"} {
				status, _ := getBody(t, srv.URL+path)
				assert.Equal(t, http.StatusNotFound, status, path)
			}
		})
	}
}

func TestDebugPageRoutes(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) },
		channelsapi.WithDebugPage("/debug/"), channelsapi.WithDebugPageInReleaseMode())

	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(srv.URL + "/debug")
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusMovedPermanently, resp.StatusCode)
	assert.Equal(t, "debug/", resp.Header.Get("Location"), "relative, so that it works behind a prefix")

	tests := []struct {
		path, contentType, contains string
	}{
		{"/debug/", "text/html; charset=utf-8", `<script src="app.js"`},
		{"/debug/app.js", "text/javascript; charset=utf-8", "window.ws = sock"},
		{"/debug/app.css", "text/css; charset=utf-8", "system-ui"},
		{"/debug/favicon.svg", "image/svg+xml", "<svg"},
		{"/debug/schema.json", "application/json; charset=utf-8", `"websocket_path":"/ws"`},
	}
	for _, tt := range tests {
		resp, err := http.Get(srv.URL + tt.path)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, tt.path)
		assert.Equal(t, tt.contentType, resp.Header.Get("Content-Type"), tt.path)
		assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'", tt.path)
		assert.Contains(t, string(body), tt.contains, tt.path)
		// Offline: nothing the page loads names another host.
		text := strings.ReplaceAll(string(body), `xmlns="http://www.w3.org/2000/svg"`, "")
		assert.NotContains(t, text, "http://", tt.path)
		assert.NotContains(t, text, "https://", tt.path)
	}
}

// debugWidget has a field of each schema type.
type debugWidget struct {
	ID        uint           `json:"id" gorm:"primaryKey"`
	Title     string         `json:"title" binding:"required,max=200"`
	Price     float64        `json:"price" binding:"gte=0"`
	Count     int            `json:"count"`
	Active    bool           `json:"active"`
	Due       *time.Time     `json:"due"`
	Tags      []string       `json:"tags" gorm:"serializer:json"`
	Meta      map[string]int `json:"meta" gorm:"serializer:json"`
	Secret    string         `json:"-"`
	Note      string         `json:"note"`
	CreatedAt time.Time      `json:"created_at"`
	DeletedAt gorm.DeletedAt `json:"deleted_at"`
}

func TestDebugPageSchema(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		addTestModel(t, api)
		require.NoError(t, db.AutoMigrate(&debugWidget{}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[debugWidget]{
			Stream: "widgets", ReadOnly: true, ReadOnlyFields: []string{"note"}, PageSize: 10, MaxPageSize: 50,
			Filters: map[string][]string{
				"due":    {"isnull", "lte"},
				"title":  {"icontains", "exact", "in"},
				"count":  {"range", "in", "exact"},
				"active": {"exact"},
				"price":  {"range", "gte"},
			},
			OrderingFields: []string{"count", "title"},
			SearchFields:   []string{"title", "note"},
		}))
		// Guarded by a scope, without filters: it takes live queries too.
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[debugWidget]{
			Stream: "widgets_scoped", ReadOnly: true,
			ScopeFilter: func(context.Context, *channelsapi.Request) (channelsapi.Filter, error) { return nil, nil },
		}))
	}, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode(), channelsapi.WithPath("/socket"), channelsapi.WithRESTPrefix("/api"))

	status, body := getBody(t, srv.URL+"/channels-api/schema.json")
	require.Equal(t, http.StatusOK, status)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(body, &doc), "%s", body)
	assert.Equal(t, "/socket", doc["websocket_path"])
	streams := doc["streams"].([]any)
	require.Len(t, streams, 3)

	// Sorted by stream name.
	assert.Equal(t, "testmodel", streams[0].(map[string]any)["name"])
	want := `{
		"name": "testmodel", "model": "tests.testmodel", "rest_path": "/api/testmodel",
		"pk": "id", "pk_type": "integer", "read_only": false, "page_size": 25, "max_page_size": 100,
		"fields": [
			{"name": "id", "type": "integer", "nullable": false, "required": false, "read_only": true, "rules": []},
			{"name": "name", "type": "string", "nullable": false, "required": true, "read_only": false, "rules": ["required", "max=255"]}
		],
		"actions": [
			{"name": "list", "builtin": true, "detail": false, "method": "GET", "path": "/api/testmodel"},
			{"name": "retrieve", "builtin": true, "detail": true, "method": "GET", "path": "/api/testmodel/:pk"},
			{"name": "create", "builtin": true, "detail": false, "method": "POST", "path": "/api/testmodel"},
			{"name": "update", "builtin": true, "detail": true, "method": "PUT", "path": "/api/testmodel/:pk"},
			{"name": "patch", "builtin": true, "detail": true, "method": "PATCH", "path": "/api/testmodel/:pk"},
			{"name": "delete", "builtin": true, "detail": true, "method": "DELETE", "path": "/api/testmodel/:pk"},
			{"name": "subscribe", "builtin": true, "detail": false},
			{"name": "unsubscribe", "builtin": true, "detail": false},
			{"name": "subscribe_instance", "builtin": true, "detail": true},
			{"name": "unsubscribe_instance", "builtin": true, "detail": true},
			{"name": "named_detail", "builtin": false, "detail": true, "method": "GET", "path": "/api/testmodel/:pk/named_detail"},
			{"name": "named_list", "builtin": false, "detail": false, "method": "GET", "path": "/api/testmodel/named_list"},
			{"name": "test_detail", "builtin": false, "detail": true, "method": "GET", "path": "/api/testmodel/:pk/test_detail"},
			{"name": "test_list", "builtin": false, "detail": false, "method": "GET", "path": "/api/testmodel/test_list"}
		],
		"filters": [], "ordering_fields": [], "search_fields": [], "relations": []
	}`
	got, err := json.Marshal(streams[0])
	require.NoError(t, err)
	assert.JSONEq(t, want, string(got))

	widgets := streams[1].(map[string]any)
	assert.Equal(t, "widgets", widgets["name"])
	assert.Equal(t, "channelsapi_test.debugwidget", widgets["model"])
	assert.Equal(t, true, widgets["read_only"])
	assert.EqualValues(t, 10, widgets["page_size"])
	assert.EqualValues(t, 50, widgets["max_page_size"])
	var actions []string
	for _, a := range widgets["actions"].([]any) {
		actions = append(actions, a.(map[string]any)["name"].(string))
	}
	assert.Equal(t, []string{"list", "retrieve", "subscribe", "unsubscribe", "subscribe_instance", "unsubscribe_instance",
		"subscribe_list", "unsubscribe_list"}, actions,
		"a read-only stream serves no create, update, patch or delete; one with filters takes live queries")

	// The query grammar: filters in the order of the fields, each with its
	// value type and its lookups in the order of PROTOCOL.md section 8.
	query, err := json.Marshal(map[string]any{
		"filters": widgets["filters"], "ordering_fields": widgets["ordering_fields"], "search_fields": widgets["search_fields"],
	})
	require.NoError(t, err)
	assert.JSONEq(t, `{
		"filters": [
			{"name": "title", "type": "string", "lookups": ["exact", "in", "icontains"]},
			{"name": "price", "type": "number", "lookups": ["gte", "range"]},
			{"name": "count", "type": "integer", "lookups": ["exact", "in", "range"]},
			{"name": "active", "type": "boolean", "lookups": ["exact"]},
			{"name": "due", "type": "datetime", "lookups": ["lte", "isnull"]}
		],
		"ordering_fields": ["count", "title"],
		"search_fields": ["title", "note"]
	}`, string(query))

	scoped := streams[2].(map[string]any)
	assert.Equal(t, "widgets_scoped", scoped["name"])
	assert.Empty(t, scoped["filters"])
	actions = nil
	for _, a := range scoped["actions"].([]any) {
		a := a.(map[string]any)
		actions = append(actions, a["name"].(string))
		if strings.HasSuffix(a["name"].(string), "_list") {
			assert.Equal(t, map[string]any{"name": a["name"], "builtin": true, "detail": false}, a, "WebSocket only")
		}
	}
	assert.Equal(t, []string{"list", "retrieve", "subscribe", "unsubscribe", "subscribe_instance", "unsubscribe_instance",
		"subscribe_list", "unsubscribe_list"}, actions, "a guarded stream takes live queries")

	type fieldInfo struct {
		Type     string
		Nullable bool
		Required bool
		ReadOnly bool
		Rules    string
	}
	fields := map[string]fieldInfo{}
	for _, f := range widgets["fields"].([]any) {
		f := f.(map[string]any)
		var rules []string
		for _, r := range f["rules"].([]any) {
			rules = append(rules, r.(string))
		}
		fields[f["name"].(string)] = fieldInfo{f["type"].(string), f["nullable"].(bool), f["required"].(bool), f["read_only"].(bool), strings.Join(rules, ",")}
	}
	assert.Equal(t, map[string]fieldInfo{
		"id":         {Type: "integer", ReadOnly: true},
		"title":      {Type: "string", Required: true, Rules: "required,max=200"},
		"price":      {Type: "number", Rules: "gte=0"},
		"count":      {Type: "integer"},
		"active":     {Type: "boolean"},
		"due":        {Type: "datetime", Nullable: true},
		"tags":       {Type: "array", Nullable: true},
		"meta":       {Type: "object", Nullable: true},
		"note":       {Type: "string", ReadOnly: true},
		"created_at": {Type: "datetime", ReadOnly: true},
		"deleted_at": {Type: "datetime", Nullable: true, ReadOnly: true},
	}, fields, "json:\"-\" fields are not in the schema")
}

func TestDebugPageBadConfig(t *testing.T) {
	tests := []struct {
		name  string
		path  string
		route string // registered by the application before Register
	}{
		{name: "relative path", path: "channels-api"},
		{name: "root", path: "/"},
		{name: "wildcard", path: "/debug/:page"},
		{name: "catch-all", path: "/debug/*all"},
		{name: "unclean", path: "/a/../debug"},
		{name: "route conflict", path: "/channels-api", route: "/channels-api/*any"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			router := gin.New()
			if tt.route != "" {
				router.GET(tt.route, func(*gin.Context) {})
			}
			db := openDB(t, &TestModel{})
			api, err := channelsapi.Register(router, db, channelsapi.WithDebugPage(tt.path), channelsapi.WithDebugPageInReleaseMode())
			require.Error(t, err)
			assert.Nil(t, api)
			assert.Contains(t, err.Error(), "debug")
		})
	}
}

func TestDebugPageCreate(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
	p := openDebugPage(t, srv, "/channels-api/")

	p.choose("#stream", "testmodel")
	p.choose("#action", "create")
	// The form shows the schema: name is required, id read-only.
	p.waitVisible(`#fields .field[data-field="name"] .req`)
	assert.Contains(t, p.text(`#fields .field[data-field="name"] .hint`), "at most 255 characters")
	assert.Contains(t, p.text(`#readonly-fields`), "id")
	p.do(chromedp.WaitNotPresent(chromedp.CSS(`#fields .field[data-field="id"]`)))

	p.do(chromedp.SendKeys(chromedp.CSS("#field-name"), "Alice"))
	// The frame editor follows the form.
	frame := p.rawFrame()
	rid := frame.Payload["request_id"]
	require.NotEmpty(t, rid)
	assert.Equal(t, "testmodel", frame.Stream)
	assert.Equal(t, map[string]any{"action": "create", "data": map[string]any{"name": "Alice"}, "request_id": rid}, frame.Payload)

	p.do(chromedp.Click(chromedp.CSS("#send")))
	reply := fmt.Sprintf(`#log .entry[data-kind="reply"][data-action="create"][data-status="201"][data-request-id=%q]`, rid)
	p.waitVisible(reply)
	p.waitVisible(fmt.Sprintf(`#log .entry[data-kind="sent"][data-action="create"][data-request-id=%q]`, rid))
	assert.Contains(t, p.text(reply), "Alice")
	assert.Contains(t, p.text("#result"), "201")
	assert.NotEqual(t, rid, p.rawFrame().Payload["request_id"], "a fresh request_id after each send")

	var rows []TestModel
	require.NoError(t, srv.DB.Find(&rows).Error)
	require.Len(t, rows, 1)
	assert.Equal(t, "Alice", rows[0].Name)

	// Expanding an entry shows the frame as pretty JSON.
	p.do(chromedp.Click(chromedp.CSS(reply + " > summary")))
	p.waitVisible(reply + " pre.json")
	assert.Contains(t, p.text(reply+" pre.json"), `"response_status": 201`)
}

func TestDebugPageSubscribe(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
	seed(t, srv.DB, "first")
	p := openDebugPage(t, srv, "/channels-api")

	p.choose("#action", "subscribe")
	p.choose("#sub-event", "create")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	sub := `#subscriptions .sub[data-stream="testmodel"][data-kind="group"][data-event="create"][data-pk=""][data-state="active"]`
	p.waitVisible(sub)

	status, _ := srv.doREST(t, http.MethodPost, "/testmodel", `{"name":"Bob"}`)
	require.Equal(t, http.StatusCreated, status)
	event := `#log .entry[data-kind="event"][data-stream="testmodel"][data-action="create"][data-pk="2"]`
	p.waitVisible(event)
	assert.Contains(t, p.text(event), "Bob")

	// DCRF instance subscription: its events carry the request_id.
	p.choose("#action", "subscribe_instance")
	p.fill("#pk", "1")
	rid := p.rawFrame().Payload["request_id"].(string)
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#subscriptions .sub[data-kind="instance"][data-pk="1"][data-state="active"]`)
	status, _ = srv.doREST(t, http.MethodPatch, "/testmodel/1", `{"name":"renamed"}`)
	require.Equal(t, http.StatusOK, status)
	p.waitVisible(fmt.Sprintf(`#log .entry[data-kind="event"][data-action="update"][data-request-id=%q]`, rid))

	// Unsubscribe from the list.
	p.do(chromedp.Click(chromedp.CSS(sub + ` button[data-act="unsubscribe"]`)))
	p.do(chromedp.WaitNotPresent(chromedp.CSS(sub)))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="unsubscribe"][data-status="200"]`)
	p.do(chromedp.Click(chromedp.CSS(`#subscriptions .sub[data-kind="instance"] button[data-act="unsubscribe"]`)))
	p.do(chromedp.WaitNotPresent(chromedp.CSS(`#subscriptions .sub`)))
	p.waitVisible(fmt.Sprintf(`#log .entry[data-kind="reply"][data-action="unsubscribe_instance"][data-status="204"][data-request-id=%q]`, rid))
}

func TestDebugPageValidationErrors(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
	p := openDebugPage(t, srv, "/channels-api/")

	p.choose("#action", "create")
	p.do(chromedp.Click(chromedp.CSS("#send"))) // name left empty
	msg := `#fields .field[data-field="name"] .field-error`
	p.waitVisible(msg)
	assert.Equal(t, "This field is required.", p.text(msg))
	p.waitVisible(`#log .entry[data-kind="error"][data-action="create"][data-status="400"]`)
	assert.Contains(t, p.text("#result"), "400")

	// Editing the field clears its message; a too long value gets another.
	p.fill("#field-name", strings.Repeat("x", 256))
	p.do(chromedp.WaitNotVisible(chromedp.CSS(msg)))
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(msg)
	assert.Equal(t, "Ensure this field has no more than 255 characters.", p.text(msg))
	assert.Zero(t, countRows[TestModel](t, srv.DB))
}

func TestDebugPageListAndDelete(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
	seed(t, srv.DB, "a", "b", "c")
	p := openDebugPage(t, srv, "/channels-api/")

	p.choose("#action", "list")
	p.fill("#page-size", "2")
	assert.Equal(t, map[string]any{"page_size": float64(2)}, p.rawFrame().Payload["data"])
	p.do(chromedp.Click(chromedp.CSS("#send")))
	list := `#log .entry[data-kind="reply"][data-action="list"][data-status="200"]`
	p.waitVisible(list)
	assert.Contains(t, p.text(list), "3 objects, page 1 of 2")

	var frames []struct {
		Direction string `json:"direction"`
		Kind      string `json:"kind"`
		Frame     struct {
			Payload struct {
				Action string `json:"action"`
				Data   []TestModel
				Meta   map[string]any `json:"meta"`
			} `json:"payload"`
		} `json:"frame"`
	}
	p.evaluate(`JSON.stringify(channelsapi.frames().filter((f) => f.kind === "reply"))`, &frames)
	require.Len(t, frames, 1)
	assert.Equal(t, "received", frames[0].Direction)
	assert.Equal(t, []TestModel{{ID: 1, Name: "a"}, {ID: 2, Name: "b"}}, frames[0].Frame.Payload.Data)
	meta := frames[0].Frame.Payload.Meta
	withoutPosition(t, meta)
	assert.Equal(t, map[string]any{"count": 3.0, "page": 1.0, "page_size": 2.0, "num_pages": 2.0}, meta)

	p.choose("#action", "delete")
	p.fill("#pk", "2")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="delete"][data-status="200"]`)
	var rows []TestModel
	require.NoError(t, srv.DB.Order("id").Find(&rows).Error)
	assert.Equal(t, []TestModel{{ID: 1, Name: "a"}, {ID: 3, Name: "c"}}, rows)
}

// debugTask is the model of the list query tests.
type debugTask struct {
	ID    uint       `json:"id" gorm:"primaryKey"`
	Title string     `json:"title"`
	Votes int        `json:"votes"`
	Done  bool       `json:"done"`
	Due   *time.Time `json:"due"`
}

// newTasksServer serves debugTask as "tasks", declaring filters of each
// value type, ordering and search, with the debugger page, and stores
// tasks.
func newTasksServer(t *testing.T, tasks ...debugTask) *testServer {
	t.Helper()
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) { addTasks(t, api, db) }, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
	if len(tasks) > 0 {
		require.NoError(t, srv.DB.Create(&tasks).Error)
	}
	return srv
}

// addTasks adds the "tasks" stream of debugTask.
func addTasks(t *testing.T, api *channelsapi.API, db *gorm.DB) {
	t.Helper()
	require.NoError(t, db.AutoMigrate(&debugTask{}))
	require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[debugTask]{
		Stream: "tasks",
		Filters: map[string][]string{
			"title": {"exact", "icontains", "in"},
			"votes": {"exact", "gte", "lte", "range", "in"},
			"done":  {"exact"},
			"due":   {"isnull"},
		},
		OrderingFields: []string{"votes", "title"},
		SearchFields:   []string{"title"},
	}))
}

func TestDebugPageListQuery(t *testing.T) {
	due := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	srv := newTasksServer(t,
		debugTask{Title: "alpha", Votes: 1},
		debugTask{Title: "banana", Votes: 3, Done: true},
		debugTask{Title: "cherry", Votes: 5},
		debugTask{Title: "avocado", Votes: 7, Due: &due},
		debugTask{Title: "date", Votes: 4})
	p := openDebugPage(t, srv, "/channels-api/")

	p.choose("#stream", "tasks")
	p.choose("#action", "list")
	// A row per declared filter, offering its declared lookups only.
	var filters map[string][]string
	p.evaluate(`JSON.stringify(Object.fromEntries([...document.querySelectorAll("#filters .filter")].map((r) =>
		[r.dataset.filter, [...r.querySelectorAll("[data-lookup] option")].map((o) => o.value)])))`, &filters)
	assert.Equal(t, map[string][]string{
		"title": {"exact", "in", "icontains"},
		"votes": {"exact", "in", "gte", "lte", "range"},
		"done":  {"exact"},
		"due":   {"isnull"},
	}, filters)
	p.waitVisible("#ordering-row")
	p.waitVisible("#search-row")
	assert.NotContains(t, p.rawFrame().Payload, "data", "empty inputs are not sent")

	// Values are sent with the JSON type of their field: in as an array,
	// isnull and booleans as booleans.
	p.choose("#filter-title-lookup", "in")
	p.fill("#filter-title", "alpha, avocado")
	p.choose("#filter-votes-lookup", "in")
	p.fill("#filter-votes", "1, 7")
	p.choose("#filter-done", "false")
	p.choose("#filter-due", "true")
	p.fill("#search", "a")
	assert.Equal(t, map[string]any{
		"title__in": []any{"alpha", "avocado"}, "votes__in": []any{float64(1), float64(7)},
		"done": false, "due__isnull": true, "search": "a",
	}, p.rawFrame().Payload["data"])
	p.do(chromedp.Click(chromedp.CSS("#send")))
	first := p.listReply()
	assert.Equal(t, []string{"alpha"}, first.titles(), "avocado has a due date")

	// Clearing inputs drops their keys; a range is two numbers; ordering
	// takes several declared keys.
	p.choose("#filter-title-lookup", "icontains")
	p.fill("#filter-title", "A")
	p.choose("#filter-votes-lookup", "range")
	p.fill("#filter-votes", "2")
	p.fill("#filter-votes-to", "5")
	p.choose("#filter-done", "")
	p.choose("#filter-due", "")
	p.fill("#search", "")
	p.choose("#order-field-0", "votes")
	p.choose("#order-dir-0", "-")
	p.do(chromedp.Click(chromedp.CSS("#ordering-add")))
	p.choose("#order-field-1", "title")
	p.fill("#page-size", "10")
	assert.Equal(t, map[string]any{
		"title__icontains": "A", "votes__range": []any{float64(2), float64(5)}, "ordering": "-votes,title", "page_size": float64(10),
	}, p.rawFrame().Payload["data"])
	p.do(chromedp.Click(chromedp.CSS("#send")))
	second := p.listReply()
	assert.Equal(t, []string{"date", "banana"}, second.titles(), "cherry has no a, alpha and avocado are out of range")
	assert.Contains(t, p.text("#result"), "2 objects, page 1 of 1")

	// The page shows the rows: expanded, the reply holds those and no other.
	p.do(chromedp.Click(chromedp.CSS(second.sel + " > summary")))
	p.waitVisible(second.sel + " pre.json")
	shown := p.text(second.sel + " pre.json")
	for _, title := range []string{"date", "banana"} {
		assert.Contains(t, shown, strconv.Quote(title))
	}
	for _, title := range []string{"alpha", "cherry", "avocado"} {
		assert.NotContains(t, shown, strconv.Quote(title))
	}

	// A bad value is answered next to its filter.
	p.fill("#filter-votes", "2.5")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	msg := `#filters .filter[data-filter="votes"] .field-error`
	p.waitVisible(msg)
	assert.Equal(t, "Enter a number.", p.text(msg))
}

func TestDebugPageLiveQuery(t *testing.T) {
	srv := newTasksServer(t,
		debugTask{Title: "alpha", Votes: 1},
		debugTask{Title: "banana", Votes: 5},
		debugTask{Title: "cherry", Votes: 7})
	p := openDebugPage(t, srv, "/channels-api/")

	p.choose("#stream", "tasks")
	p.choose("#action", "subscribe_list")
	// No ordering or page in a subscription; a snapshot instead.
	p.waitVisible("#snapshot-row")
	p.waitVisible("#filters")
	p.do(chromedp.WaitNotVisible(chromedp.CSS("#ordering-row")),
		chromedp.WaitNotVisible(chromedp.CSS("#page-field")))
	p.choose("#filter-votes-lookup", "gte")
	p.fill("#filter-votes", "5")
	p.do(chromedp.Click(chromedp.CSS("#snapshot")))
	frame := p.rawFrame()
	rid := frame.Payload["request_id"].(string)
	assert.Equal(t, map[string]any{"votes__gte": float64(5), "snapshot": true}, frame.Payload["data"])
	p.do(chromedp.Click(chromedp.CSS("#send")))

	reply := p.reply("subscribe_list", rid)
	assert.Equal(t, []string{"banana", "cherry"}, reply.titles(), "the snapshot holds the matching rows")
	assert.Contains(t, p.text("#result"), "snapshot: 2 objects")
	sub := fmt.Sprintf(`#subscriptions .sub[data-kind="query"][data-stream="tasks"][data-request-id=%q][data-state="active"]`, rid)
	p.waitVisible(sub)
	assert.Contains(t, p.text(sub), "votes__gte=5")

	// One row that does not match, then one that does. Events reach the
	// connection in commit order: once the second row's event is shown, an
	// event for the first would have been shown before it.
	miss := debugTask{Title: "fig", Votes: 1}
	require.NoError(t, srv.DB.Create(&miss).Error)
	hit := debugTask{Title: "grape", Votes: 9}
	require.NoError(t, srv.DB.Create(&hit).Error)
	events := fmt.Sprintf(`#log .entry[data-kind="event"][data-stream="tasks"][data-request-id=%q][data-subscription="query"]`, rid)
	enter := fmt.Sprintf(`%s[data-action="create"][data-pk="%d"]`, events, hit.ID)
	p.waitVisible(enter)
	assert.Contains(t, p.text(enter), "grape")
	assert.Equal(t, 1, p.count(events), "the live query's only event is the matching row's")
	assert.Zero(t, p.count(fmt.Sprintf(`#log .entry[data-kind="event"][data-pk="%d"]`, miss.ID)))

	// Updated out of the filter, the row leaves.
	require.NoError(t, srv.DB.Model(&hit).Update("votes", 2).Error)
	p.waitVisible(fmt.Sprintf(`%s[data-action="delete"][data-pk="%d"]`, events, hit.ID))

	// Unsubscribe from the list of subscriptions.
	p.do(chromedp.Click(chromedp.CSS(sub + ` button[data-act="unsubscribe"]`)))
	p.do(chromedp.WaitNotPresent(chromedp.CSS(`#subscriptions .sub[data-kind="query"]`)))
	p.reply("unsubscribe_list", rid)

	// A second live query on the same filter is the fence: once it has the
	// events of two more matching rows, the first would have had them too.
	p.do(chromedp.Click(chromedp.CSS("#snapshot")))
	rid2 := p.rawFrame().Payload["request_id"].(string)
	require.NotEqual(t, rid, rid2)
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.reply("subscribe_list", rid2)
	for _, title := range []string{"kiwi", "lemon"} {
		task := debugTask{Title: title, Votes: 6}
		require.NoError(t, srv.DB.Create(&task).Error)
		p.waitVisible(fmt.Sprintf(`#log .entry[data-kind="event"][data-action="create"][data-request-id=%q][data-pk="%d"]`, rid2, task.ID))
	}
	assert.Equal(t, 2, p.count(events), "no event after unsubscribe_list")
}

func TestDebugPageRawFrameAndConsole(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
	seed(t, srv.DB, "one")
	p := openDebugPage(t, srv, "/channels-api/")

	// The frame editor sends what is typed, JSON or not.
	p.fill("#raw", `{"stream": "testmodel", "payload": {"action": "retrieve", "pk": 1, "request_id": 42}}`)
	assert.Equal(t, "edited", p.attr("#raw-state", "data-state"))
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="retrieve"][data-status="200"][data-request-id="42"]`)
	assert.Equal(t, "retrieve", p.value("#action"), "the form follows the frame editor")
	assert.Equal(t, "1", p.value("#pk"))

	p.fill("#raw", `{nope`)
	assert.Equal(t, "invalid", p.attr("#raw-state", "data-state"))
	p.do(chromedp.Click(chromedp.CSS("#send")))
	p.waitVisible(`#log .entry[data-kind="error"][data-stream=""][data-status="400"]`)
	assert.Contains(t, p.text(`#log .entry[data-kind="error"][data-stream=""]`), "Invalid frame.")

	// window.ws is the socket, as in channels-api; its frames are logged.
	p.evaluate(`ws.send(JSON.stringify({stream: "testmodel", payload: {action: "test_detail", pk: 1, request_id: "console-1"}})), true`, nil)
	p.waitVisible(`#log .entry[data-kind="sent"][data-request-id="console-1"]`)
	p.waitVisible(`#log .entry[data-kind="reply"][data-action="test_detail"][data-request-id="console-1"]`)
	assert.Contains(t, p.text(`#log .entry[data-kind="reply"][data-request-id="console-1"]`), "one")

	// Filters, copy, clear.
	p.do(chromedp.Click(chromedp.CSS(`.chips .chip[data-kind="sent"]`)))
	p.do(chromedp.WaitNotVisible(chromedp.CSS(`#log .entry[data-kind="sent"]`)))
	p.do(chromedp.Click(chromedp.CSS("#log-copy")))
	p.waitVisible(`#result[data-kind="note"]`)
	var copied []map[string]any
	var text string
	p.evaluate(`channelsapi.lastCopy`, &text)
	require.NoError(t, json.Unmarshal([]byte(text), &copied), text)
	require.NotEmpty(t, copied)
	for _, f := range copied {
		assert.NotEqual(t, "sent", f["direction"], "hidden frames are not copied")
	}
	p.do(chromedp.Click(chromedp.CSS("#log-clear")))
	p.do(chromedp.WaitNotPresent(chromedp.CSS(`#log .entry`)))
}

func TestDebugPageReconnect(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
	p := openDebugPage(t, srv, "/channels-api/")

	p.choose("#action", "subscribe")
	p.choose("#sub-event", "update")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	sub := `#subscriptions .sub[data-event="update"]`
	p.waitVisible(sub + `[data-state="active"]`)

	// A closed connection keeps the subscription listed, and the page
	// subscribes again on the next connection.
	p.do(chromedp.Click(chromedp.CSS("#conn-toggle")))
	p.waitVisible(`#conn[data-state="closed"]`)
	p.waitVisible(sub + `[data-state="lost"]`)
	p.do(chromedp.Click(chromedp.CSS("#conn-toggle")))
	p.waitVisible(`#conn[data-state="open"]`)
	p.waitVisible(sub + `[data-state="active"]`)
	var n int
	p.evaluate(`document.querySelectorAll("#log .entry[data-kind=reply][data-action=subscribe]").length`, &n)
	assert.Equal(t, 2, n)
	assert.Zero(t, p.count(`#log .entry[data-kind="sent"][data-since]`),
		"with no position known, the page subscribes again without since")

	// The server goes away: the page says so and retries with backoff.
	p.allowConsoleError("WebSocket connection to")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, srv.API.Shutdown(ctx))
	p.waitVisible(`#conn[data-state="waiting"]`)
	p.waitVisible(`#log .entry[data-kind="system"].sys-error`)
	assert.Contains(t, p.text(`#log .entry[data-kind="system"].sys-error`), "1001")
}

func TestDebugPageShowsOffsets(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())
	seed(t, srv.DB, "first") // offset 1
	p := openDebugPage(t, srv, "/channels-api/")

	// Subscribed before the page knows the stream's epoch: the events
	// give offsets, not yet a position to resume from.
	p.choose("#action", "subscribe")
	p.choose("#sub-event", "create")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	group := `#subscriptions .sub[data-kind="group"][data-event="create"]`
	p.waitVisible(group + `[data-state="active"][data-offset=""]`)
	assert.Contains(t, p.text(group), "no position")

	status, _ := srv.doREST(t, http.MethodPost, "/testmodel", `{"name":"Bob"}`)
	require.Equal(t, http.StatusCreated, status)
	event := `#log .entry[data-kind="event"][data-action="create"][data-pk="2"][data-offset="2"]`
	p.waitVisible(event)
	assert.Contains(t, p.text(event+" > summary .offset"), "@2")
	p.waitVisible(group + `[data-offset="2"][data-epoch=""]`)

	// A list reply shows its position, which gives the epoch.
	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	list := p.listReply()
	assert.Equal(t, "2", p.attr(list.sel, "data-offset"))
	epoch := p.attr(list.sel, "data-epoch")
	require.NotEmpty(t, epoch)
	assert.Contains(t, p.text(list.sel+" > summary .position"), "at @2")
	assert.Contains(t, p.text("#result"), "at @2")
	p.waitVisible(fmt.Sprintf(`%s[data-offset="2"][data-epoch=%q]`, group, epoch))
	assert.Contains(t, p.text(group+" .sub-pos"), "@2")

	// A DCRF instance event shows its offset too, and moves every
	// subscription of its stream.
	p.choose("#action", "subscribe_instance")
	p.fill("#pk", "1")
	rid := p.rawFrame().Payload["request_id"].(string)
	p.do(chromedp.Click(chromedp.CSS("#send")))
	instance := fmt.Sprintf(`#subscriptions .sub[data-kind="instance"][data-request-id=%q]`, rid)
	p.waitVisible(instance + `[data-state="active"][data-offset="2"]`)
	status, _ = srv.doREST(t, http.MethodPatch, "/testmodel/1", `{"name":"renamed"}`)
	require.Equal(t, http.StatusOK, status)
	p.waitVisible(fmt.Sprintf(`#log .entry[data-kind="event"][data-action="update"][data-request-id=%q][data-offset="3"]`, rid))
	p.waitVisible(instance + `[data-offset="3"]`)
	p.waitVisible(group + `[data-offset="3"]`)
}

func TestDebugPageResumesAfterReconnect(t *testing.T) {
	srv, gate := newGatedServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	seed(t, srv.DB, "one") // offset 1
	p := openDebugPage(t, srv, "/channels-api/")

	// A list gives the stream's position; the subscriptions made after it
	// start there.
	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	list := p.listReply()
	require.Equal(t, "1", p.attr(list.sel, "data-offset"))
	epoch := p.attr(list.sel, "data-epoch")
	require.NotEmpty(t, epoch)

	p.choose("#action", "subscribe")
	p.choose("#sub-event", "create")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	group := `#subscriptions .sub[data-kind="group"][data-event="create"]`
	p.waitVisible(group + `[data-state="active"][data-offset="1"]`)

	p.choose("#action", "subscribe_instance")
	p.fill("#pk", "1")
	rid := p.rawFrame().Payload["request_id"].(string)
	p.do(chromedp.Click(chromedp.CSS("#send")))
	instance := fmt.Sprintf(`#subscriptions .sub[data-kind="instance"][data-request-id=%q]`, rid)
	p.waitVisible(instance + `[data-state="active"][data-offset="1"]`)

	// A live event moves every subscription of its stream.
	seed(t, srv.DB, "live") // offset 2: pk 2
	p.waitVisible(`#log .entry[data-kind="event"][data-action="create"][data-pk="2"][data-offset="2"]`)
	p.waitVisible(group + `[data-offset="2"]`)
	p.waitVisible(instance + `[data-offset="2"]`)

	// The server drops the connection. The page's next one waits at the
	// gate while rows are written.
	gate.cut()
	gate.waitHeld(t)
	p.waitVisible(group + `[data-state="lost"]`)
	p.waitVisible(instance + `[data-state="lost"]`)
	seed(t, srv.DB, "away-1", "away-2", "away-3")                                       // offsets 3, 4, 5: pk 3, 4, 5
	require.NoError(t, srv.DB.Model(&TestModel{ID: 1}).Update("name", "renamed").Error) // offset 6
	seed(t, srv.DB, "away-4")                                                           // offset 7: pk 6
	gate.open()

	// Each subscription is sent again with since its position, and the
	// server replays what it missed.
	for _, sent := range []string{`[data-action="subscribe"]`, fmt.Sprintf(`[data-action="subscribe_instance"][data-request-id=%q]`, rid)} {
		p.waitVisible(`#log .entry[data-kind="sent"][data-since="2"]` + sent)
		p.waitVisible(`#log .entry[data-kind="reply"][data-recovered="true"]` + sent)
	}
	assert.Equal(t, []map[string]any{{"epoch": epoch, "offset": 2.0}, {"epoch": epoch, "offset": 2.0}}, p.sentSinces())
	for _, sub := range []string{group, instance} {
		p.waitVisible(sub + `[data-state="active"][data-resume="recovered"]`)
		assert.Contains(t, p.text(sub+" .sub-resume"), "resumed")
	}

	// Live again. Events reach the page in the order of their offsets,
	// replays first: once this one is shown, every replayed one has been.
	seed(t, srv.DB, "after") // offset 8: pk 7
	p.waitVisible(`#log .entry[data-kind="event"][data-action="create"][data-pk="7"][data-offset="8"]`)

	// Every event each subscription would have received, in order, once.
	assert.Equal(t, map[string][]string{
		"testmodel":        {"create 2 @2", "create 3 @3", "create 4 @4", "create 5 @5", "create 6 @7", "create 7 @8"},
		"testmodel " + rid: {"update 1 @6"},
	}, p.eventsBySubscription())
	p.waitVisible(group + `[data-offset="8"]`)
	p.waitVisible(instance + `[data-offset="8"]`)
	assert.Zero(t, p.count(`[data-resume="lost"]`), "no state was lost")
}

func TestDebugPageResumesLiveQuery(t *testing.T) {
	srv, gate := newGatedServer(t, func(api *channelsapi.API, db *gorm.DB) { addTasks(t, api, db) })
	createTasks(t, srv.DB, &debugTask{Title: "alpha", Votes: 1}, &debugTask{Title: "banana", Votes: 5}) // offsets 1, 2
	p := openDebugPage(t, srv, "/channels-api/")

	// The snapshot carries the position of its rows.
	p.choose("#stream", "tasks")
	p.choose("#action", "subscribe_list")
	p.choose("#filter-votes-lookup", "gte")
	p.fill("#filter-votes", "5")
	p.do(chromedp.Click(chromedp.CSS("#snapshot")))
	rid := p.rawFrame().Payload["request_id"].(string)
	p.do(chromedp.Click(chromedp.CSS("#send")))
	snapshot := p.reply("subscribe_list", rid)
	assert.Equal(t, []string{"banana"}, snapshot.titles())
	assert.Equal(t, "2", p.attr(snapshot.sel, "data-offset"))
	epoch := p.attr(snapshot.sel, "data-epoch")
	require.NotEmpty(t, epoch)
	query := fmt.Sprintf(`#subscriptions .sub[data-kind="query"][data-request-id=%q]`, rid)
	p.waitVisible(query + `[data-state="active"][data-offset="2"]`)

	gate.cut()
	gate.waitHeld(t)
	p.waitVisible(query + `[data-state="lost"]`)
	cherry, fig := debugTask{Title: "cherry", Votes: 7}, debugTask{Title: "fig", Votes: 1}
	createTasks(t, srv.DB, &cherry, &fig)                                        // offsets 3 (enters), 4 (stays out)
	require.NoError(t, srv.DB.Model(&debugTask{ID: 2}).Update("votes", 2).Error) // offset 5: banana leaves
	gate.open()

	// Sent again with its filters and since; the reply holds no rows, the
	// events follow.
	sent := fmt.Sprintf(`[data-action="subscribe_list"][data-request-id=%q]`, rid)
	p.waitVisible(`#log .entry[data-kind="sent"][data-since="2"]` + sent)
	reply := `#log .entry[data-kind="reply"][data-recovered="true"]` + sent
	p.waitVisible(reply)
	assert.Equal(t, []map[string]any{{"epoch": epoch, "offset": 2.0}}, p.sentSinces())
	var data map[string]any
	p.evaluate(`JSON.stringify(channelsapi.frames().filter((f) => f.kind === "sent" && f.frame.payload.action === "subscribe_list").pop().frame.payload.data)`, &data)
	assert.Equal(t, map[string]any{"votes__gte": 5.0, "snapshot": true, "since": map[string]any{"epoch": epoch, "offset": 2.0}}, data)
	p.waitVisible(query + `[data-state="active"][data-resume="recovered"]`)

	grape := debugTask{Title: "grape", Votes: 9}
	createTasks(t, srv.DB, &grape) // offset 6
	p.waitVisible(fmt.Sprintf(`#log .entry[data-kind="event"][data-request-id=%q][data-pk="%d"][data-offset="6"]`, rid, grape.ID))
	assert.Equal(t, map[string][]string{
		"tasks " + rid: {fmt.Sprintf("create %d @3", cherry.ID), "delete 2 @5", fmt.Sprintf("create %d @6", grape.ID)},
	}, p.eventsBySubscription())
	p.waitVisible(query + `[data-offset="6"]`)
	assert.Zero(t, p.count(`[data-resume="lost"]`), "no state was lost")
}

func TestDebugPageStateLost(t *testing.T) {
	// The history holds one event per stream: a page that misses two
	// cannot be sent them.
	srv, gate := newGatedServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, channelsapi.WithHistory(1, 0))
	seed(t, srv.DB, "one") // offset 1
	p := openDebugPage(t, srv, "/channels-api/")

	p.choose("#action", "list")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	require.Equal(t, "1", p.attr(p.listReply().sel, "data-offset"))
	p.choose("#action", "subscribe")
	p.choose("#sub-event", "create")
	p.do(chromedp.Click(chromedp.CSS("#send")))
	group := `#subscriptions .sub[data-kind="group"][data-event="create"]`
	p.waitVisible(group + `[data-state="active"][data-offset="1"]`)

	gate.cut()
	gate.waitHeld(t)
	p.waitVisible(group + `[data-state="lost"]`)
	seed(t, srv.DB, "away-1", "away-2") // offsets 2, 3: the history holds 3 only
	gate.open()

	p.waitVisible(`#log .entry[data-kind="sent"][data-action="subscribe"][data-since="1"]`)
	reply := `#log .entry[data-kind="reply"][data-action="subscribe"][data-recovered="false"]`
	p.waitVisible(reply)
	assert.Contains(t, p.text(reply+" > summary .resume"), "state lost")
	// The page says so twice: next to the subscription and in the log.
	p.waitVisible(group + `[data-state="active"][data-resume="lost"][data-offset="3"]`)
	assert.Contains(t, p.text(group+" .sub-resume"), "state lost: reload")
	warning := `#log .entry[data-kind="system"].sys-warn[data-resume="lost"][data-stream="testmodel"]`
	p.waitVisible(warning)
	assert.Contains(t, p.text(warning), "state lost: reload")
	assert.Contains(t, p.text(warning), "after @1")

	// Live from the reply's position; nothing of what was missed.
	seed(t, srv.DB, "after") // offset 4: pk 4
	p.waitVisible(`#log .entry[data-kind="event"][data-action="create"][data-pk="4"][data-offset="4"]`)
	p.waitVisible(group + `[data-offset="4"]`)
	assert.Equal(t, map[string][]string{"testmodel": {"create 4 @4"}}, p.eventsBySubscription())
}

// ---------------------------------------------------------------- helpers

// socketGate lets a test drop the WebSocket connections of a server, as a
// server that goes away does, and hold the next ones until it lets them
// through.
type socketGate struct {
	mu      sync.Mutex
	conns   []net.Conn    // the upgraded connections
	held    chan struct{} // closed to let held upgrades through; nil when open
	waiting chan struct{} // an upgrade waits at the gate
}

// newGatedServer is newServer with the debugger page and a socketGate in
// front of its WebSocket endpoint.
func newGatedServer(t *testing.T, setup func(api *channelsapi.API, db *gorm.DB), opts ...channelsapi.Option) (*testServer, *socketGate) {
	t.Helper()
	g := &socketGate{waiting: make(chan struct{}, 1)}
	router := gin.New()
	router.Use(g.handle)
	srv := serveAPI(t, router, openDB(t, &TestModel{}), setup, append(opts, channelsapi.WithDebugPage(""), channelsapi.WithDebugPageInReleaseMode())...)
	t.Cleanup(g.open) // before the server closes: no request stays held
	return srv, g
}

func (g *socketGate) handle(c *gin.Context) {
	if c.Request.URL.Path != "/ws" {
		return
	}
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if held != nil {
		select {
		case g.waiting <- struct{}{}:
		default:
		}
		select {
		case <-held:
		case <-c.Request.Context().Done():
			c.AbortWithStatus(http.StatusServiceUnavailable)
			return
		}
	}
	c.Writer = &gateWriter{ResponseWriter: c.Writer, g: g}
}

// gateWriter records the connection that a WebSocket upgrade takes over.
type gateWriter struct {
	gin.ResponseWriter
	g *socketGate
}

func (w *gateWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := w.ResponseWriter.Hijack()
	if err == nil {
		w.g.mu.Lock()
		w.g.conns = append(w.g.conns, conn)
		w.g.mu.Unlock()
	}
	return conn, rw, err
}

// cut holds the upgrades to come and closes the connections upgraded so
// far, without a close frame.
func (g *socketGate) cut() {
	g.mu.Lock()
	g.held = make(chan struct{})
	conns := g.conns
	g.conns = nil
	g.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// waitHeld waits until an upgrade waits at the gate.
func (g *socketGate) waitHeld(t *testing.T) {
	t.Helper()
	select {
	case <-g.waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("no WebSocket upgrade reached the gate within 10 s")
	}
}

// open lets the held upgrades, and those to come, through.
func (g *socketGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held != nil {
		close(g.held)
		g.held = nil
	}
}

func createTasks(t *testing.T, db *gorm.DB, tasks ...*debugTask) {
	t.Helper()
	for _, task := range tasks {
		require.NoError(t, db.Create(task).Error)
	}
}

// sentSinces returns the since of every frame the page sent with one.
func (p *debugPage) sentSinces() []map[string]any {
	p.t.Helper()
	var sinces []map[string]any
	p.evaluate(`JSON.stringify(channelsapi.frames().filter((f) => f.kind === "sent" && f.frame.payload && f.frame.payload.data && f.frame.payload.data.since)
		.map((f) => f.frame.payload.data.since))`, &sinces)
	return sinces
}

// eventsBySubscription returns the events the page logged, by stream and
// request_id ("testmodel" for channels-api events, "tasks q1" for those
// of request_id q1), each as "<action> <pk> @<offset>", in the order
// received.
func (p *debugPage) eventsBySubscription() map[string][]string {
	p.t.Helper()
	var frames []struct {
		Stream  string `json:"stream"`
		Payload struct {
			Action    string          `json:"action"`
			PK        json.RawMessage `json:"pk"`
			Data      map[string]any  `json:"data"`
			Offset    uint64          `json:"offset"`
			RequestID string          `json:"request_id"`
		} `json:"payload"`
	}
	p.evaluate(`JSON.stringify(channelsapi.frames().filter((f) => f.kind === "event").map((f) => f.frame))`, &frames)
	got := map[string][]string{}
	for _, f := range frames {
		key := strings.TrimSpace(f.Stream + " " + f.Payload.RequestID)
		pk := string(f.Payload.PK)
		if pk == "" { // a DCRF event: the pk is in its data
			pk = fmt.Sprint(cmp.Or(f.Payload.Data["pk"], f.Payload.Data["id"]))
		}
		got[key] = append(got[key], fmt.Sprintf("%s %s @%d", f.Payload.Action, pk, f.Payload.Offset))
	}
	return got
}

// debugPage is the debugger page in a headless Chromium tab.
type debugPage struct {
	t      *testing.T
	ctx    context.Context
	origin string // http://127.0.0.1:port

	mu       sync.Mutex
	requests []string // every URL the page requested, WebSockets included
	problems []string // uncaught exceptions and console errors
	allowed  []string // console errors the test expects
}

// openDebugPage starts a browser for t, opens path of srv in it and waits
// until the page is connected. Cleanup checks that the page requested
// nothing outside srv and logged no error, closes the browser and waits
// until its processes have exited. Without Chromium the test is skipped,
// except on CI (CI=true), where it fails.
func openDebugPage(t *testing.T, srv *testServer, path string) *debugPage {
	t.Helper()
	return openDebugPageAt(t, srv.URL, path)
}

// openDebugPageAt is openDebugPage for the server at origin
// (http://127.0.0.1:port).
func openDebugPageAt(t *testing.T, origin, path string) *debugPage {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("browser test: %s is missing and CI=true, so it may not be skipped: %v", chromiumPath, err)
		}
		t.Skipf("browser test skipped: %s not found (install it with apt-get install -y chromium)", chromiumPath)
	}
	p := &debugPage{t: t, origin: origin}
	dataDir := t.TempDir()

	// The deadline bounds everything the browser does, its start included.
	root, cancelRoot := context.WithTimeout(context.Background(), browserTestTimeout)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(root,
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(dataDir),
	)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithListener(p.listen))
	p.ctx = ctx
	t.Cleanup(func() {
		// Close the browser gracefully, then make sure that it and the
		// goroutines of chromedp are gone.
		closeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := chromedp.Cancel(closeCtx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("closing the browser: %v", err)
		}
		cancel()
		cancelBrowser()
		cancelAlloc()
		cancelRoot()
		waitProcessesGone(t, "--user-data-dir="+dataDir)
	})
	t.Cleanup(p.checkRequests)

	p.do(chromedp.EmulateViewport(1440, 900),
		chromedp.Navigate(origin+path),
		chromedp.WaitVisible(chromedp.CSS(`body[data-ready="true"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="open"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#log .entry[data-kind="system"]`)))
	return p
}

// listen runs in the tab's event loop: it must return fast and send no command.
func (p *debugPage) listen(ev any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		p.requests = append(p.requests, ev.Request.URL)
	case *network.EventWebSocketCreated:
		p.requests = append(p.requests, ev.URL)
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		text := d.Text
		if d.Exception != nil {
			text += " " + d.Exception.Description
		}
		p.problems = append(p.problems, "exception: "+text)
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError {
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			p.problems = append(p.problems, "console.error: "+strings.Join(args, " "))
		}
	case *cdplog.EventEntryAdded:
		if ev.Entry.Level == cdplog.EntryLevelError {
			p.problems = append(p.problems, "browser log: "+ev.Entry.Text+" "+ev.Entry.URL)
		}
	}
}

// allowConsoleError accepts console errors that contain text.
func (p *debugPage) allowConsoleError(text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.allowed = append(p.allowed, text)
}

// checkRequests asserts that the page stayed on the test server (it works
// offline) and logged no error.
func (p *debugPage) checkRequests() {
	p.mu.Lock()
	defer p.mu.Unlock()
	ws := "ws" + strings.TrimPrefix(p.origin, "http")
	var sawPage, sawSocket bool
	for _, u := range p.requests {
		switch {
		case strings.HasPrefix(u, p.origin+"/"):
			sawPage = true
		case strings.HasPrefix(u, ws+"/"):
			sawSocket = true
		default:
			p.t.Errorf("the page requested %s, outside the server %s", u, p.origin)
		}
	}
	assert.True(p.t, sawPage && sawSocket, "requests seen: %v", p.requests)
problems:
	for _, pr := range p.problems {
		for _, a := range p.allowed {
			if strings.Contains(pr, a) {
				continue problems
			}
		}
		p.t.Errorf("page error: %s", pr)
	}
}

func (p *debugPage) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	require.NoError(p.t, chromedp.Do(p.ctx, actions...))
}

func (p *debugPage) waitVisible(sel string) {
	p.t.Helper()
	p.do(chromedp.WaitVisible(chromedp.CSS(sel)))
}

func (p *debugPage) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Text(chromedp.CSS(sel)))
	require.NoError(p.t, err, sel)
	return strings.TrimSpace(s)
}

func (p *debugPage) value(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Value(chromedp.CSS(sel)))
	require.NoError(p.t, err, sel)
	return s
}

func (p *debugPage) attr(sel, name string) string {
	p.t.Helper()
	r, err := chromedp.Run(p.ctx, chromedp.AttributeValue(chromedp.CSS(sel), name))
	require.NoError(p.t, err, sel)
	return r.Value
}

// evaluate runs a JavaScript expression in the page and decodes its JSON
// result into out (nil to ignore it). A string result that holds JSON is
// decoded too.
func (p *debugPage) evaluate(expr string, out any) {
	p.t.Helper()
	raw, err := chromedp.Run(p.ctx, chromedp.Evaluate[[]byte](expr))
	require.NoError(p.t, err, expr)
	if out == nil {
		return
	}
	if _, isString := out.(*string); !isString && bytes.HasPrefix(raw, []byte(`"`)) {
		var s string
		require.NoError(p.t, json.Unmarshal(raw, &s))
		raw = []byte(s)
	}
	require.NoError(p.t, json.Unmarshal(raw, out), "%s", raw)
}

// choose selects value in a <select> and fires its change event, as a user
// choosing it does.
func (p *debugPage) choose(sel, value string) {
	p.t.Helper()
	var got string
	p.evaluate(fmt.Sprintf(`(() => {
		const e = document.querySelector(%s);
		e.value = %s;
		e.dispatchEvent(new Event("change", {bubbles: true}));
		return e.value;
	})()`, jsString(sel), jsString(value)), &got)
	require.Equal(p.t, value, got, "no option %q in %s", value, sel)
}

// fill replaces the text of an input or textarea and fires its input event.
func (p *debugPage) fill(sel, value string) {
	p.t.Helper()
	p.evaluate(fmt.Sprintf(`(() => {
		const e = document.querySelector(%s);
		e.value = %s;
		e.dispatchEvent(new Event("input", {bubbles: true}));
		return true;
	})()`, jsString(sel), jsString(value)), nil)
}

// count is the number of elements sel matches.
func (p *debugPage) count(sel string) int {
	p.t.Helper()
	var n int
	p.evaluate(fmt.Sprintf(`document.querySelectorAll(%s).length`, jsString(sel)), &n)
	return n
}

// pageReply is a successful reply the page logged.
type pageReply struct {
	sel     string // its log entry
	objects []debugTask
}

func (r pageReply) titles() []string {
	titles := []string{}
	for _, o := range r.objects {
		titles = append(titles, o.Title)
	}
	return titles
}

// reply waits for the page to log the 200 reply to action with request_id
// rid and returns it, with the objects of a list or snapshot.
func (p *debugPage) reply(action, rid string) pageReply {
	p.t.Helper()
	sel := fmt.Sprintf(`#log .entry[data-kind="reply"][data-action=%q][data-status="200"][data-request-id=%q]`, action, rid)
	p.waitVisible(sel)
	var payload struct {
		Data json.RawMessage `json:"data"`
	}
	p.evaluate(fmt.Sprintf(`JSON.stringify(channelsapi.frames().find((f) =>
		f.kind === "reply" && f.frame.payload.action === %s && f.frame.payload.request_id === %s).frame.payload)`,
		jsString(action), jsString(rid)), &payload)
	r := pageReply{sel: sel}
	switch action {
	case "list":
		require.NoError(p.t, json.Unmarshal(payload.Data, &r.objects))
	case "subscribe_list":
		var d struct {
			Subscription string      `json:"subscription"`
			Results      []debugTask `json:"results"`
		}
		require.NoError(p.t, json.Unmarshal(payload.Data, &d))
		assert.Equal(p.t, rid, d.Subscription)
		r.objects = d.Results
	}
	return r
}

// listReply waits for the reply to the list sent last, whose request_id
// the frame editor no longer shows (it has a fresh one after a send).
func (p *debugPage) listReply() pageReply {
	p.t.Helper()
	var rid string
	p.evaluate(`channelsapi.frames().filter((f) => f.kind === "sent" && f.frame.payload.action === "list").pop().frame.payload.request_id`, &rid)
	return p.reply("list", rid)
}

// rawFrame is the frame in the page's frame editor.
func (p *debugPage) rawFrame() (f struct {
	Stream  string         `json:"stream"`
	Payload map[string]any `json:"payload"`
}) {
	p.t.Helper()
	text := p.value("#raw")
	require.NoError(p.t, json.Unmarshal([]byte(text), &f), text)
	return f
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// waitProcessesGone waits until no process has arg on its command line: the
// browser's children can outlive its main process for a moment. After 10 s
// it kills them and fails the test.
func waitProcessesGone(t *testing.T, arg string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		pids := processesWith(arg)
		if len(pids) == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Errorf("browser processes %v still ran 10 s after the browser closed", pids)
			return
		}
	}
}

func processesWith(arg string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for a := range bytes.SplitSeq(cmdline, []byte{0}) {
			if string(a) == arg {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// setGinMode sets Gin's (global) mode for the test.
func setGinMode(t *testing.T, mode string) {
	prev, prevWriter := gin.Mode(), gin.DefaultWriter
	gin.SetMode(mode)
	gin.DefaultWriter = io.Discard // debug mode prints every route
	t.Cleanup(func() {
		gin.SetMode(prev)
		gin.DefaultWriter = prevWriter
	})
}

func getBody(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body
}
