package channelsapi_test

// This file tests errors.go, the translation of errors to wire form: a
// constraint violation is a 400 or a 409 that names no SQL, table or
// column, and a server error (a panicking or failing action, data that
// cannot be encoded, the database gone) is a 500 without internal detail on
// both transports, its cause logged.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/channelsapi/channelsapi"
)

// constraintTeam is referenced by constraintMember.
type constraintTeam struct {
	ID   uint   `json:"id" gorm:"primaryKey"`
	Name string `json:"name"`
}

// constraintMember has the constraints a database enforces: a unique
// column whose JSON name differs from its column name, a NOT NULL column
// without a default written from a pointer, a unique pair, a unique column
// clients may not write, and a foreign key. Its verbose name, in the
// messages, is "constraint member".
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
		exists   = "constraint member with this email already exists."
		pair     = "The fields code, region must make a unique set."
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
		{"unique pair", "members", "create", 0, map[string]any{"email": "new@example.com", "nick": "x", "code": "c", "region": "r"}, 400, channelsapi.NonFieldErrors, pair},
		{"unique pair on patch", "members", "patch", second.ID, map[string]any{"code": "c", "region": "r"}, 400, channelsapi.NonFieldErrors, pair},
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

// logBuffer collects what the library logs; it is written from server
// goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// captureLog returns a buffer and the option that logs to it.
func captureLog() (*logBuffer, channelsapi.Option) {
	l := &logBuffer{}
	return l, channelsapi.WithLogger(slog.New(slog.NewTextHandler(l, nil)))
}

// serverErrorViewSet adds the conformance ViewSet with actions that fail
// in the ways a handler can.
func serverErrorViewSet(vs *channelsapi.ViewSet[TestModel]) {
	vs.Actions["crash_list"] = channelsapi.Action[TestModel]{
		Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
			panic("SELECT secret FROM test_models: boom")
		},
	}
	vs.Actions["crash_detail"] = channelsapi.Action[TestModel]{
		Detail: true,
		Handle: func(_ context.Context, _ *channelsapi.Request, m *TestModel) (any, int, error) {
			var names []string
			return names[len(m.Name)], 0, nil // a runtime error: index out of range
		},
	}
	vs.Actions["error"] = channelsapi.Action[TestModel]{
		Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
			return nil, 0, fmt.Errorf("query: %w", errors.New(`no such column: "secret" in table test_models`))
		},
	}
	vs.Actions["nan"] = channelsapi.Action[TestModel]{
		Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
			return map[string]float64{"average": math.NaN()}, 0, nil
		},
	}
}

// leakWords are internal details that must never reach a client.
var leakWords = []string{"SELECT", "secret", "test_models", "no such", "sqlite", "SQL", "boom", "panic", "index out of range", "NaN", "goroutine"}

func assertNoLeak(tb testing.TB, body []byte) {
	tb.Helper()
	for _, w := range leakWords {
		assert.NotContains(tb, string(body), w)
	}
}

func TestServerErrorsWebSocket(t *testing.T) {
	logs, logOpt := captureLog()
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api, serverErrorViewSet) }, logOpt)
	seed(t, srv.DB, "a")
	ws := srv.dial(t, nil)

	tests := []struct {
		name    string
		give    map[string]any
		wantLog string
	}{
		{"panicking list action", map[string]any{"action": "crash_list"}, "boom"},
		{"panicking detail action", map[string]any{"action": "crash_detail", "pk": 1}, "index out of range"},
		{"action error", map[string]any{"action": "error"}, "no such column"},
		{"unencodable data", map[string]any{"action": "nan"}, "NaN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assertServerError(t, ws, tt.give)
			assert.Contains(t, logs.String(), tt.wantLog)
			ws.assertAlive()
		})
	}
}

func TestServerErrorsREST(t *testing.T) {
	logs, logOpt := captureLog()
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api, serverErrorViewSet) }, logOpt)
	seed(t, srv.DB, "a")

	tests := []struct {
		name    string
		give    string // path
		wantLog string
	}{
		{"panicking list action", "/testmodel/crash_list", "boom"},
		{"panicking detail action", "/testmodel/1/crash_detail", "index out of range"},
		{"action error", "/testmodel/error", "no such column"},
		{"unencodable data", "/testmodel/nan", "NaN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := srv.restRaw(t, http.MethodGet, tt.give, nil)
			assert.Equal(t, http.StatusInternalServerError, status)
			assert.JSONEq(t, `{"detail":"A server error occurred."}`, string(body))
			assertNoLeak(t, body)
			assert.Contains(t, logs.String(), tt.wantLog)
		})
	}
	status, _ := srv.doREST(t, http.MethodGet, "/testmodel/1", "")
	assert.Equal(t, http.StatusOK, status)
}

// TestDatabaseFailure drops the table under the API: every action is a 500
// without internal detail, on both transports, and the socket survives.
func TestDatabaseFailure(t *testing.T) {
	logs, logOpt := captureLog()
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) { addTestModel(t, api) }, logOpt)
	seed(t, srv.DB, "a")
	ws := srv.dial(t, nil)
	ws.assertAlive()
	require.NoError(t, srv.DB.Migrator().DropTable(&TestModel{}))

	tests := []struct {
		name string
		give map[string]any
	}{
		{"list", map[string]any{"action": "list"}},
		{"retrieve", map[string]any{"action": "retrieve", "pk": 1}},
		{"create", map[string]any{"action": "create", "data": map[string]any{"name": "b"}}},
		{"update", map[string]any{"action": "update", "pk": 1, "data": map[string]any{"name": "b"}}},
		{"patch", map[string]any{"action": "patch", "pk": 1, "data": map[string]any{"name": "b"}}},
		{"delete", map[string]any{"action": "delete", "pk": 1}},
		{"detail action", map[string]any{"action": "test_detail", "pk": 1}},
		{"subscribe_instance", map[string]any{"action": "subscribe_instance", "pk": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assertServerError(t, ws, tt.give)
		})
	}
	for _, path := range []string{"/testmodel", "/testmodel/1", "/testmodel/1/test_detail"} {
		t.Run("REST "+path, func(t *testing.T) {
			status, body, _ := srv.restRaw(t, http.MethodGet, path, nil)
			assert.Equal(t, http.StatusInternalServerError, status)
			assert.JSONEq(t, `{"detail":"A server error occurred."}`, string(body))
		})
	}
	// The cause is logged, in the words of the database (SQLite or PostgreSQL).
	assert.Regexp(t, `no such table: test_models|relation \\"test_models\\" does not exist`, logs.String())

	require.NoError(t, srv.DB.AutoMigrate(&TestModel{}))
	got := ws.request("testmodel", map[string]any{"action": "create", "data": map[string]any{"name": "back"}, "request_id": 1})
	assert.EqualValues(t, http.StatusCreated, got["response_status"])
	ws.assertAlive()
}

func TestRESTServerErrorsHideDetail(t *testing.T) {
	srv := newServer(t, func(api *channelsapi.API, _ *gorm.DB) {
		addTestModel(t, api, func(vs *channelsapi.ViewSet[TestModel]) {
			vs.Actions["leak"] = channelsapi.Action[TestModel]{
				Handle: func(context.Context, *channelsapi.Request, *TestModel) (any, int, error) {
					return nil, 0, errors.New(`SQL logic error: no such column "secret" in test_models`)
				},
			}
		})
	}, quietLog())
	status, body, _ := srv.restRaw(t, http.MethodGet, "/testmodel/leak", nil)
	assert.Equal(t, http.StatusInternalServerError, status)
	assert.JSONEq(t, `{"detail":"A server error occurred."}`, string(body))
}

// assertServerError sends give on testmodel and checks that the reply is a
// 500 that leaks nothing.
func assertServerError(t *testing.T, ws *wsClient, give map[string]any) {
	t.Helper()
	give["request_id"] = 42
	ws.send("testmodel", give)
	raw := ws.readRaw()
	assertNoLeak(t, raw)
	assert.JSONEq(t, string(jsonBytes(t, map[string]any{"stream": "testmodel", "payload": map[string]any{
		"action": give["action"], "data": nil, "errors": []string{"A server error occurred."},
		"response_status": 500, "request_id": 42,
	}})), string(raw))
}
