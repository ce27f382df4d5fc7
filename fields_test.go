package channelsapi_test

// This file tests fields.go: which JSON keys a client may write (mass
// assignment, unknown fields), primary key parsing (injection, numeric
// strings, string keys), and values over both transports: every payload of
// the hostile corpus is answered with its status, never a server error, and
// writes nothing; unusual values are stored and read back as sent, or
// refused with 400.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// guardedModel has every kind of field clients may not write: the primary
// key, the GORM timestamps, a `json:"-"` field and a ViewSet read-only field
// ("role"). It is served on "guarded".
type guardedModel struct {
	ID        uint           `json:"id" gorm:"primaryKey"`
	Name      string         `json:"name" binding:"required"`
	Role      string         `json:"role"`
	Secret    string         `json:"-"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
	DeletedAt gorm.DeletedAt `json:"deleted_at"`
}

// victimID is the key of a row that no request of these tests may touch.
const victimID = 999

var (
	longAgo   = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	createdAt = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
)

func newGuardedServer(tb testing.TB) *testServer {
	tb.Helper()
	srv := newServer(tb, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(tb, db.AutoMigrate(&guardedModel{}))
		require.NoError(tb, channelsapi.Add(api, channelsapi.ViewSet[guardedModel]{
			Stream: "guarded", ReadOnlyFields: []string{"role"},
		}))
	}, quietLog())
	require.NoError(tb, srv.DB.Create(&guardedModel{ID: victimID, Name: "victim", Role: "root", Secret: "victim-secret", CreatedAt: createdAt}).Error)
	return srv
}

// guardedRow loads a row, soft-deleted or not.
func guardedRow(tb testing.TB, db *gorm.DB, id uint) guardedModel {
	tb.Helper()
	var m guardedModel
	require.NoError(tb, db.Unscoped().First(&m, id).Error)
	return m
}

// sendGuarded runs action with data on the WebSocket or over REST and
// returns the status and the object returned.
func sendGuarded(tb testing.TB, srv *testServer, ws *wsClient, transport, action string, pk uint, data map[string]any) (int, map[string]any) {
	tb.Helper()
	if transport == "websocket" {
		got := ws.request("guarded", map[string]any{"action": action, "pk": pk, "data": data, "request_id": action})
		obj, _ := got["data"].(map[string]any)
		return int(got["response_status"].(float64)), obj
	}
	method, path := map[string]string{"create": http.MethodPost, "update": http.MethodPut, "patch": http.MethodPatch}[action], "/guarded"
	if action != "create" {
		path = fmt.Sprintf("/guarded/%d", pk)
	}
	status, body := srv.doREST(tb, method, path, string(jsonBytes(tb, data)))
	obj, _ := body.(map[string]any)
	return status, obj
}

func TestMassAssignment(t *testing.T) {
	srv := newGuardedServer(t)
	ws := srv.dial(t, nil)
	start := time.Now().Add(-time.Minute)

	tests := []struct {
		name string
		give any // the value sent for the key name
	}{
		{"id", victimID},
		{"ID", victimID},
		{"Id", victimID},
		{"created_at", longAgo},
		{"CreatedAt", longAgo},
		{"updated_at", longAgo},
		{"UpdatedAt", longAgo},
		{"deleted_at", longAgo},
		{"DeletedAt", longAgo},
		{"Secret", "hacked"},
		{"secret", "hacked"},
		{"role", "admin"},
		{"Role", "admin"},
	}
	for _, tt := range tests {
		for _, transport := range []string{"websocket", "rest"} {
			for _, action := range []string{"create", "update", "patch"} {
				t.Run(tt.name+"/"+transport+"/"+action, func(t *testing.T) {
					row := guardedModel{Name: "orig", Role: "user", Secret: "s3cret", CreatedAt: createdAt}
					require.NoError(t, srv.DB.Create(&row).Error)
					data := map[string]any{"name": "new", tt.name: tt.give}

					status, obj := sendGuarded(t, srv, ws, transport, action, row.ID, data)
					want := http.StatusOK
					if action == "create" {
						want = http.StatusCreated
					}
					require.Equal(t, want, status, "reply %v", obj)
					id := uint(obj["id"].(float64))
					assert.NotEqual(t, uint(victimID), id)
					assert.NotContains(t, obj, "Secret")
					assert.Nil(t, obj["deleted_at"])

					got := guardedRow(t, srv.DB, id)
					assert.Equal(t, "new", got.Name)
					assert.False(t, got.DeletedAt.Valid, "deleted_at was written")
					assert.True(t, got.UpdatedAt.After(start), "updated_at was written: %v", got.UpdatedAt)
					if action == "create" {
						assert.Empty(t, got.Role)
						assert.Empty(t, got.Secret)
						assert.True(t, got.CreatedAt.After(start), "created_at was written: %v", got.CreatedAt)
					} else {
						assert.Equal(t, row.ID, id)
						assert.Equal(t, "user", got.Role)
						assert.Equal(t, "s3cret", got.Secret)
						assert.True(t, got.CreatedAt.Equal(createdAt), "created_at was written: %v", got.CreatedAt)
					}
					assert.Equal(t, got.Role, obj["role"])

					victim := guardedRow(t, srv.DB, victimID)
					assert.Equal(t, "victim", victim.Name)
					assert.Equal(t, "root", victim.Role)
					assert.False(t, victim.DeletedAt.Valid)
				})
			}
		}
	}
}

func TestUnknownFields(t *testing.T) {
	srv := newGuardedServer(t)
	ws := srv.dial(t, nil)
	row := guardedModel{Name: "orig", Role: "user"}
	require.NoError(t, srv.DB.Create(&row).Error)

	required := []string{"This field is required."}
	tests := []struct {
		name     string
		give     map[string]any
		want     map[string][]string
		wantFull map[string][]string // for update, when it differs from want
	}{
		{name: "unknown key", give: map[string]any{"name": "x", "nickname": "y"}, want: map[string][]string{"nickname": {"Unknown field."}}},
		{name: "two unknown keys", give: map[string]any{"name": "x", "a": 1, "b": nil}, want: map[string][]string{"a": {"Unknown field."}, "b": {"Unknown field."}}},
		{name: "keys are case sensitive", give: map[string]any{"Name": "x"}, want: map[string][]string{"Name": {"Unknown field."}},
			wantFull: map[string][]string{"Name": {"Unknown field."}, "name": required}},
		{name: "upper case key", give: map[string]any{"NAME": "x"}, want: map[string][]string{"NAME": {"Unknown field."}},
			wantFull: map[string][]string{"NAME": {"Unknown field."}, "name": required}},
		{name: "exact and folded key", give: map[string]any{"name": "x", "nAme": "y"}, want: map[string][]string{"nAme": {"Unknown field."}}},
		{name: "go field name of a writable field", give: map[string]any{"name": "x", "Name": "y"}, want: map[string][]string{"Name": {"Unknown field."}}},
		{name: "empty key", give: map[string]any{"name": "x", "": "y"}, want: map[string][]string{"": {"Unknown field."}}},
		{name: "json dash", give: map[string]any{"name": "x", "-": "y"}, want: map[string][]string{"-": {"Unknown field."}}},
	}
	for _, tt := range tests {
		for _, transport := range []string{"websocket", "rest"} {
			for _, action := range []string{"create", "update", "patch"} {
				t.Run(tt.name+"/"+transport+"/"+action, func(t *testing.T) {
					want := tt.want
					if action == "update" && tt.wantFull != nil {
						want = tt.wantFull
					}
					before := countRows[guardedModel](t, srv.DB)
					var status int
					var errs any
					if transport == "websocket" {
						got := ws.request("guarded", map[string]any{"action": action, "pk": row.ID, "data": tt.give, "request_id": 1})
						status = int(got["response_status"].(float64))
						errs = got["errors"]
						assert.Nil(t, got["data"])
						assert.Equal(t, []any{jsonOf(t, want)}, errs)
					} else {
						method, path := map[string]string{"create": http.MethodPost, "update": http.MethodPut, "patch": http.MethodPatch}[action], "/guarded"
						if action != "create" {
							path = fmt.Sprintf("/guarded/%d", row.ID)
						}
						status, errs = srv.doREST(t, method, path, string(jsonBytes(t, tt.give)))
						assert.Equal(t, jsonOf(t, want), errs)
					}
					assert.Equal(t, http.StatusBadRequest, status)
					assert.Equal(t, before, countRows[guardedModel](t, srv.DB))
					assert.Equal(t, "orig", guardedRow(t, srv.DB, row.ID).Name)
				})
			}
		}
	}
}

// badPKs are primary keys, as raw JSON, that name no row of an integer key.
var badPKs = []string{
	`"1 OR 1=1"`, `"1=1"`, `"1' OR '1'='1"`, `"1;DROP TABLE test_models"`, `"1; DELETE FROM test_models"`,
	`1.5`, `1e0`, `true`, `false`, `[1]`, `{"id":1}`, `""`, `" 1"`, `"1 "`, `"0x1"`, `"1.0"`,
	`-1`, `0`, `"-1"`, `99999999999999999999`, `"99999999999999999999"`, `18446744073709551616`, `-9223372036854775809`,
	`null`,
}

func TestPKInjectionWebSocket(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, quietLog())
	seed(t, srv.DB, "a", "b", "c")
	ws := srv.dial(t, nil)

	for _, pk := range badPKs {
		for _, action := range []string{"retrieve", "update", "patch", "delete", "test_detail", "subscribe_instance"} {
			t.Run(action+" "+pk, func(t *testing.T) {
				got := ws.request("testmodel", map[string]any{"action": action, "pk": json.RawMessage(pk), "data": map[string]any{"name": "pwned"}, "request_id": "r"})
				assert.Equal(t, map[string]any{
					"action": action, "data": nil, "errors": []any{"Not found."}, "response_status": 404.0, "request_id": "r",
				}, got)
			})
		}
	}
	t.Run("absent pk", func(t *testing.T) {
		for _, action := range []string{"retrieve", "update", "patch", "delete", "test_detail"} {
			got := ws.request("testmodel", map[string]any{"action": action, "data": map[string]any{"name": "pwned"}})
			assert.EqualValues(t, 404, got["response_status"], action)
			assert.Equal(t, []any{"Not found."}, got["errors"], action)
		}
	})
	assertTestModels(t, srv.DB, "a", "b", "c")
}

func TestPKInjectionREST(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, quietLog())
	seed(t, srv.DB, "a", "b", "c")

	for _, raw := range badPKs {
		pk := raw
		if s, ok := jsonOf(t, json.RawMessage(raw)).(string); ok {
			pk = s
		}
		if pk == "" {
			continue // /testmodel/ is the list
		}
		for _, tt := range []struct{ method, suffix string }{
			{http.MethodGet, ""}, {http.MethodPut, ""}, {http.MethodPatch, ""}, {http.MethodDelete, ""}, {http.MethodGet, "/test_detail"},
		} {
			t.Run(tt.method+" "+pk+tt.suffix, func(t *testing.T) {
				status, body := srv.doREST(t, tt.method, "/testmodel/"+url.PathEscape(pk)+tt.suffix, `{"name":"pwned"}`)
				assert.Equal(t, http.StatusNotFound, status)
				assert.Equal(t, map[string]any{"detail": "Not found."}, body)
			})
		}
	}
	assertTestModels(t, srv.DB, "a", "b", "c")
}

// assertTestModels checks that the table holds exactly these names, in
// key order.
func assertTestModels(tb testing.TB, db *gorm.DB, want ...string) {
	tb.Helper()
	var got []string
	require.NoError(tb, db.Model(&TestModel{}).Order("id").Pluck("name", &got).Error)
	assert.Equal(tb, want, got)
}

func TestNumericStringPK(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) })
	seed(t, srv.DB, "a", "b")
	ws := srv.dial(t, nil)

	tests := []struct {
		name string
		give map[string]any
		want any
	}{
		{"retrieve", map[string]any{"action": "retrieve", "pk": "2"}, map[string]any{"id": 2, "name": "b"}},
		{"detail action", map[string]any{"action": "test_detail", "pk": "2"}, "b"},
		{"patch", map[string]any{"action": "patch", "pk": "1", "data": map[string]any{"name": "c"}}, map[string]any{"id": 1, "name": "c"}},
		{"update", map[string]any{"action": "update", "pk": "1", "data": map[string]any{"name": "d"}}, map[string]any{"id": 1, "name": "d"}},
		{"leading zero", map[string]any{"action": "retrieve", "pk": "02"}, map[string]any{"id": 2, "name": "b"}},
		{"delete", map[string]any{"action": "delete", "pk": "2"}, map[string]any{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ws.request("testmodel", tt.give)
			assert.Less(t, got["response_status"], 300.0, "reply %v", got)
			assert.Equal(t, jsonOf(t, tt.want), got["data"])
		})
	}
	assertTestModels(t, srv.DB, "d")
}

// keyedModel has a string primary key; it is served on "keyed".
type keyedModel struct {
	Code  string `json:"code" gorm:"primaryKey"`
	Label string `json:"label"`
}

func TestStringPK(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, db *gorm.DB) {
		require.NoError(t, db.AutoMigrate(&keyedModel{}))
		require.NoError(t, channelsapi.Add(api, channelsapi.ViewSet[keyedModel]{Stream: "keyed"}))
	}, quietLog())
	rows := []keyedModel{{"abc", "first"}, {"1", "numeric"}, {"hello world", "spaced"}, {"a'b", "quoted"}, {"üß", "unicode"}}
	require.NoError(t, srv.DB.Create(&rows).Error)
	ws := srv.dial(t, nil)

	tests := []struct {
		name string
		give string // pk as raw JSON
		want any    // the label, or nil for 404
	}{
		{"plain", `"abc"`, "first"},
		{"numeric string", `"1"`, "numeric"},
		{"number", `1`, "numeric"},
		{"space", `"hello world"`, "spaced"},
		{"quote", `"a'b"`, "quoted"},
		{"unicode", `"üß"`, "unicode"},
		{"other case", `"ABC"`, nil},
		{"injection", `"abc' OR '1'='1"`, nil},
		{"injection with comment", `"x' OR 1=1 --"`, nil},
		{"like wildcard", `"%"`, nil},
		{"like prefix", `"ab%"`, nil},
		{"underscore", `"ab_"`, nil},
		{"empty", `""`, nil},
		{"bool", `true`, nil},
		{"list", `["abc"]`, nil},
		{"object", `{"code":"abc"}`, nil},
		{"null", `null`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ws.request("keyed", map[string]any{"action": "retrieve", "pk": json.RawMessage(tt.give), "request_id": 1})
			if tt.want == nil {
				assert.EqualValues(t, 404, got["response_status"])
				assert.Equal(t, []any{"Not found."}, got["errors"])
				assert.Nil(t, got["data"])
			} else {
				assert.EqualValues(t, 200, got["response_status"])
				assert.Equal(t, tt.want, got["data"].(map[string]any)["label"])
			}
			if s, ok := jsonOf(t, json.RawMessage(tt.give)).(string); ok && s != "" {
				status, body := srv.doREST(t, http.MethodGet, "/keyed/"+url.PathEscape(s), "")
				if tt.want == nil {
					assert.Equal(t, http.StatusNotFound, status)
					assert.Equal(t, map[string]any{"detail": "Not found."}, body)
				} else if assert.Equal(t, http.StatusOK, status, "body %v", body) {
					assert.Equal(t, tt.want, body.(map[string]any)["label"])
				}
			}
		})
	}

	t.Run("writes", func(t *testing.T) {
		got := ws.request("keyed", map[string]any{"action": "delete", "pk": "abc' OR '1'='1"})
		assert.EqualValues(t, 404, got["response_status"])
		status, _ := srv.doREST(t, http.MethodDelete, "/keyed/"+url.PathEscape("x' OR '1'='1"), "")
		assert.Equal(t, http.StatusNotFound, status)

		got = ws.request("keyed", map[string]any{"action": "patch", "pk": "abc", "data": map[string]any{"code": "zzz", "label": "changed"}})
		assert.EqualValues(t, 200, got["response_status"])
		assert.Equal(t, map[string]any{"code": "abc", "label": "changed"}, got["data"])
		status, body := srv.doREST(t, http.MethodPatch, "/keyed/"+url.PathEscape("hello world"), `{"label":"rest"}`)
		assert.Equal(t, http.StatusOK, status)
		assert.Equal(t, map[string]any{"code": "hello world", "label": "rest"}, body)

		status, _ = srv.doREST(t, http.MethodDelete, "/keyed/"+url.PathEscape("a'b"), "")
		assert.Equal(t, http.StatusNoContent, status)

		var codes []string
		require.NoError(t, srv.DB.Model(&keyedModel{}).Order("code").Pluck("code", &codes).Error)
		assert.Equal(t, []string{"1", "abc", "hello world", "üß"}, codes)
	})
}

// TestHostilePayloads sends the hostile corpus over both transports: every
// frame is answered with its status, none with a server error, the socket
// keeps answering and the table does not change.
func TestHostilePayloads(t *testing.T) {
	srv := newItemsServer(t)
	ws := srv.dial(t, nil)
	frames, requests := hostileFrames(), hostileRequests()
	var serverErrors int
	for i, tt := range frames {
		before := dumpRows[limitItem](t, srv.DB)
		require.NoError(t, ws.conn.WriteMessage(websocket.TextMessage, []byte(tt.give)))
		raw := ws.readRaw()
		var f struct {
			Payload struct {
				ResponseStatus int `json:"response_status"`
			} `json:"payload"`
		}
		require.NoError(t, json.Unmarshal(raw, &f), "%s: reply %q", tt.name, raw)
		if f.Payload.ResponseStatus >= 500 {
			serverErrors++
		}
		assert.Equal(t, tt.want, f.Payload.ResponseStatus, "frame %d %s: reply %.300s", i, tt.name, raw)
		ws.assertAliveOn("items")
		assert.Equal(t, before, dumpRows[limitItem](t, srv.DB), "%s changed the table", tt.name)
	}
	for _, tt := range requests {
		before := dumpRows[limitItem](t, srv.DB)
		status, body := srv.restAs(t, nil, tt.method, tt.path, tt.body)
		if status >= 500 {
			serverErrors++
		}
		assert.Equal(t, tt.want, status, "%s: body %.300s", tt.name, body)
		assert.True(t, json.Valid(body), "%s: body is not JSON: %q", tt.name, body)
		assert.Equal(t, before, dumpRows[limitItem](t, srv.DB), "%s changed the table", tt.name)
	}
	status, _ := srv.restAs(t, nil, http.MethodGet, "/items/1", "")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, 1, srv.API.Stats().Connections, "the socket survived the corpus")
	t.Logf("hostile payloads: %d WebSocket frames, %d REST requests, %d answered 5xx", len(frames), len(requests), serverErrors)
	assert.Zero(t, serverErrors)
}

// TestHostileValuesStored writes values that are valid JSON but unusual
// for a database: each is stored and read back as it was, or refused with
// a 400, never a server error.
func TestHostileValuesStored(t *testing.T) {
	srv := newItemsServer(t)
	ws := srv.dial(t, nil)
	tests := []struct {
		name string
		give string // the data of a create, raw JSON
	}{
		{"NUL inside a string", `{"name":"a\u0000b"}`},
		{"invalid UTF-8", "{\"name\":\"a\xff\xfeb\"}"},
		{"lone surrogate", `{"name":"a\ud800b"}`},
		{"right-to-left override", `{"name":"\u202egnp.exe"}`},
		{"line separators", `{"name":"a\u2028b\u2029c"}`},
		{"SQL fragment", `{"name":"'); DROP TABLE limit_items;--"}`},
		{"markup", `{"name":"<script>alert(1)</script>"}`},
		{"100 two-byte characters", `{"name":"` + strings.Repeat("é", 100) + `"}`},
		{"100 emoji", `{"name":"` + strings.Repeat("😀", 100) + `"}`},
		{"largest int64", `{"name":"x","qty":9223372036854775807}`},
		{"smallest int64", `{"name":"x","qty":-9223372036854775808}`},
		{"largest float64", `{"name":"x","price":1.7976931348623157e308}`},
		{"smallest float64", `{"name":"x","price":5e-324}`},
		{"negative zero", `{"name":"x","price":-0.0}`},
	}
	var stored, refused, serverErrors int
	for _, tt := range tests {
		for _, transport := range []string{"websocket", "rest"} {
			var status int
			var obj map[string]any
			var body []byte
			if transport == "websocket" {
				ws.sendRaw([]byte(itemFrame(`{"action":"create","request_id":1,"data":` + tt.give + `}`)))
				body = ws.readRaw()
				got, _ := parseJSON(body).(map[string]any)["payload"].(map[string]any)
				status = int(got["response_status"].(float64))
				obj, _ = got["data"].(map[string]any)
			} else {
				status, body = srv.restAs(t, nil, http.MethodPost, "/items", tt.give)
				obj, _ = parseJSON(body).(map[string]any)
			}
			if status != http.StatusCreated {
				assertNoSQL(t, body)
			}
			switch {
			case status == http.StatusCreated:
				stored++
				back := ws.request("items", map[string]any{"action": "retrieve", "pk": obj["id"], "request_id": 2})
				assert.Equal(t, obj, back["data"], "%s over %s: read back", tt.name, transport)
			case status == http.StatusBadRequest:
				refused++
			default:
				if status >= 500 {
					serverErrors++
				}
				t.Errorf("%s over %s: status %d", tt.name, transport, status)
			}
		}
	}
	t.Logf("hostile values on %s: %d stored and read back, %d refused with 400, %d server errors", srv.DB.Dialector.Name(), stored, refused, serverErrors)
}
